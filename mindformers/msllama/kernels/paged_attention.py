"""The paged decode-attention CPU kernel as a MindSpore primitive (`ops.Custom`, func_type "aot").

`decode_attention_op(block_size, heads, kv_heads)(qkv, kv_cache, rope_cos, rope_sin, block_tables,
context_lens)` takes the fused QKV projection qkv [B, (heads + 2 * kv_heads) * D] float32 before
rotary, the block-major cache kv_cache [num_blocks * 2 * kv_heads * block_size, D] float32 (layout
in model.py), the rotary tables rope_cos / rope_sin [S, D] (rotate-half layout), block_tables
[B, M] int32 and context_lens [B] int32 (each row's position + 1). It applies the rotary embedding
at each row's position, writes each row's K/V into kv_cache at that position, in place, then
returns [B, kv_heads, heads / kv_heads, D]: each rotated query, scaled by 1 / sqrt(D), attends to
its sequence's first context_lens[b] positions only. Shapes and dtypes are checked when the graph
compiles, with errors naming the input; at run time the kernel returns error code 4 (a block
within a context outside [0, num_blocks)) or 6 (a context length outside [1, min(M * block_size,
S)]), which MindSpore raises as a RuntimeError.
"""
from __future__ import annotations

from pathlib import Path

from ..config import RuntimeConfig
from .build import KernelUnavailable, Library, element_type, loaded_library, unless_built

SOURCE = Path(__file__).with_name("paged_attention.cpp")
FUNCTION = "PagedDecodeAttentionBS{}"
BLOCK_SIZES = (8, 16, 32, 64, 128)  # the entry points the library exports, one per block size
KERNEL_NAME = "cpu_paged"  # the RuntimeConfig.attention_kernel value that selects this kernel


def library() -> Library:
    """The kernel library, built on first use; raises KernelUnavailable with the reason."""
    return loaded_library(SOURCE, tuple(FUNCTION.format(bs) for bs in BLOCK_SIZES))


def resolve_attention_kernel(rt: RuntimeConfig) -> RuntimeConfig:
    """`rt` itself, or, when it asks for this kernel and the kernel cannot be built here (or has no
    entry point for the block size), `rt` with the basic-op attention and a warning saying why."""
    if rt.attention_kernel != KERNEL_NAME:
        return rt

    def build() -> Library:
        if rt.block_size not in BLOCK_SIZES:
            raise KernelUnavailable(f"block_size {rt.block_size} is not one of the kernel's {list(BLOCK_SIZES)}")
        return library()

    return unless_built(rt, "attention_kernel", "basic", f"'{KERNEL_NAME}' is unavailable, using 'basic'", build)


def _check(name: str, ok: bool, rule: str) -> None:
    if not ok:
        raise ValueError(f"paged decode attention input '{name}': {rule}")


def _shapes(heads: int, kv_heads: int):
    def infer(qkv, kv_cache, rope_cos, rope_sin, block_tables, context_lens):
        _check("rope_cos", len(rope_cos) == 2 and rope_cos[1] % 2 == 0,
               f"must be [positions, head_dim] with an even head_dim, got {list(rope_cos)}")
        head_dim = rope_cos[1]
        _check("rope_sin", list(rope_sin) == list(rope_cos), f"must have rope_cos's shape {list(rope_cos)}, "
               f"got {list(rope_sin)}")
        width = (heads + 2 * kv_heads) * head_dim
        _check("qkv", len(qkv) == 2 and qkv[1] == width, f"must be [B, (heads + 2 * kv_heads) * head_dim] = "
               f"[B, {width}], got {list(qkv)}")
        b = qkv[0]
        _check("kv_cache", len(kv_cache) == 2 and kv_cache[1] == head_dim and kv_cache[0] % (2 * kv_heads) == 0,
               f"must be [num_blocks * 2 * kv_heads * block_size, head_dim] with kv_heads = {kv_heads}, "
               f"head_dim = {head_dim}, got {list(kv_cache)}")
        _check("block_tables", len(block_tables) == 2 and block_tables[0] == b,
               f"must be [B, M] with B = {b}, got {list(block_tables)}")
        _check("context_lens", list(context_lens) == [b], f"must be [B] = [{b}], got {list(context_lens)}")
        return [b, kv_heads, heads // kv_heads, head_dim]
    return infer


def _infer_dtype(qkv, kv_cache, rope_cos, rope_sin, block_tables, context_lens):
    import mindspore as ms

    for name, dtype, want in (("qkv", qkv, ms.float32), ("kv_cache", kv_cache, ms.float32),
                              ("rope_cos", rope_cos, ms.float32), ("rope_sin", rope_sin, ms.float32),
                              ("block_tables", block_tables, ms.int32), ("context_lens", context_lens, ms.int32)):
        element = element_type(dtype)
        _check(name, element == want, f"must be {want}, got {element}")
    return qkv


def decode_attention_op(block_size: int, heads: int, kv_heads: int):
    """A new primitive running the kernel for caches of `block_size` and a model of `heads` query
    and `kv_heads` KV heads (builds the library on first use)."""
    from mindspore import ops

    if block_size not in BLOCK_SIZES:
        raise ValueError(f"paged decode attention: block_size must be one of {list(BLOCK_SIZES)}, got {block_size}")
    if kv_heads <= 0 or heads % kv_heads or heads > 256:
        raise ValueError(f"paged decode attention: heads ({heads}) must be a multiple of kv_heads ({kv_heads}), "
                         "at most 256")
    return ops.Custom(f"{library().path}:{FUNCTION.format(block_size)}", out_shape=_shapes(heads, kv_heads),
                      out_dtype=_infer_dtype, func_type="aot")
