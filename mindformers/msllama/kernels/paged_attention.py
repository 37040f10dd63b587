"""The paged decode-attention CPU kernel as a MindSpore primitive (`ops.Custom`, func_type "aot").

`decode_attention_op(block_size)(q, kv_cache, k_new, v_new, block_tables, context_lens)` with
q [B, kv_heads, group, D] float32 (already multiplied by the softmax scale), the block-major cache
kv_cache [num_blocks * 2 * kv_heads * block_size, D] float32 (layout in model.py),
this step's k_new / v_new [B, kv_heads, D], block_tables [B, M] int32 and context_lens [B] int32
(tokens after this step) first writes each sequence's new K/V rows at position context_lens[b] - 1
into kv_cache, in place, then returns [B, kv_heads, group, D]: each query attends to its
sequence's first context_lens[b] positions only. Shapes and dtypes are checked when the graph
compiles, with errors naming the input; at run time the kernel returns error code 4 (a block
within a context outside [0, num_blocks)) or 6 (a context length outside [1, M * block_size]),
which MindSpore raises as a RuntimeError.
"""
from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

from ..config import RuntimeConfig
from .build import KernelUnavailable, Library, loaded_library

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
    try:
        if rt.block_size not in BLOCK_SIZES:
            raise KernelUnavailable(f"block_size {rt.block_size} is not one of the kernel's {list(BLOCK_SIZES)}")
        library()
    except KernelUnavailable as e:
        warnings.warn(f"config key 'attention_kernel': '{KERNEL_NAME}' is unavailable, using 'basic' "
                      f"instead: {e}", RuntimeWarning, stacklevel=2)
        return dataclasses.replace(rt, attention_kernel="basic")
    return rt


def _check(name: str, ok: bool, rule: str) -> None:
    if not ok:
        raise ValueError(f"paged decode attention input '{name}': {rule}")


def _infer_shape(q, kv_cache, k_new, v_new, block_tables, context_lens):
    _check("q", len(q) == 4, f"must be [B, kv_heads, group, head_dim], got {list(q)}")
    b, kv_heads, group, head_dim = q
    _check("q", kv_heads * group <= 256, f"at most 256 query heads, got {kv_heads * group}")
    _check("kv_cache", len(kv_cache) == 2 and kv_cache[1] == head_dim and kv_cache[0] % (2 * kv_heads) == 0,
           f"must be [num_blocks * 2 * kv_heads * block_size, head_dim] with kv_heads = {kv_heads}, "
           f"head_dim = {head_dim}, got {list(kv_cache)}")
    for name, shape in (("k_new", k_new), ("v_new", v_new)):
        _check(name, list(shape) == [b, kv_heads, head_dim], f"must be [B, kv_heads, head_dim] = "
               f"[{b}, {kv_heads}, {head_dim}], got {list(shape)}")
    _check("block_tables", len(block_tables) == 2 and block_tables[0] == b,
           f"must be [B, M] with B = {b}, got {list(block_tables)}")
    _check("context_lens", list(context_lens) == [b], f"must be [B] = [{b}], got {list(context_lens)}")
    return q


def _infer_dtype(q, kv_cache, k_new, v_new, block_tables, context_lens):
    import mindspore as ms

    for name, dtype, want in (("q", q, ms.float32), ("kv_cache", kv_cache, ms.float32),
                              ("k_new", k_new, ms.float32), ("v_new", v_new, ms.float32),
                              ("block_tables", block_tables, ms.int32), ("context_lens", context_lens, ms.int32)):
        element = dtype.element_type() if isinstance(dtype, ms.TensorType) else dtype
        _check(name, element == want, f"must be {want}, got {element}")
    return q


def decode_attention_op(block_size: int):
    """A new primitive running the kernel for caches of `block_size` (builds the library on first use)."""
    from mindspore import ops

    if block_size not in BLOCK_SIZES:
        raise ValueError(f"paged decode attention: block_size must be one of {list(BLOCK_SIZES)}, got {block_size}")
    return ops.Custom(f"{library().path}:{FUNCTION.format(block_size)}", out_shape=_infer_shape,
                      out_dtype=_infer_dtype, func_type="aot")
