"""The whole-decoder-layer CPU kernel as a MindSpore primitive (`ops.Custom`, func_type "aot").

`decode_layer_op(block_size)(x, attention_norm, ffn_norm, eps, heads, wqkv, wo, w13, w2, kv_cache,
rope_cos, rope_sin, block_tables, context_lens)` runs one decoder layer for the rows x [B, H]
(one token each, at position context_lens[b] - 1), with the linear weights packed by
`pack_panels` ([K, N] -> [ceil(N / 32), K, 32]) and heads = [query heads, KV heads] int32; the
other inputs are those of the paged attention kernel (paged_attention.py), and like it the op
writes the rows' K/V into kv_cache in place. Decode and paged-prefill graphs of at most
`RuntimeConfig.fused_layer_rows` rows use it: the per-op layer is 11 launches, this one.
"""
from __future__ import annotations

from pathlib import Path

from ..config import RuntimeConfig
from . import paged_attention
from .build import KernelUnavailable, Library, element_type, loaded_library, unless_built
from .paged_attention import BLOCK_SIZES
from .small_matmul import PANEL, panel_count

SOURCE = Path(__file__).with_name("decode_layer.cpp")
FUNCTION = "DecodeLayerBS{}"


def library() -> Library:
    """The kernel library, built on first use; raises KernelUnavailable with the reason."""
    return loaded_library(SOURCE, tuple(FUNCTION.format(bs) for bs in BLOCK_SIZES))


def resolve_decode_layer(rt: RuntimeConfig) -> RuntimeConfig:
    """`rt` itself, or, when it asks for this kernel and the kernel cannot be built here, `rt`
    with `fused_layer_rows: 0` (the per-op layer) and a warning saying why. The attention kernel
    must build too: the layer runs it."""
    if not rt.fused_layer_rows:
        return rt

    def build() -> Library:
        if rt.block_size not in BLOCK_SIZES:
            raise KernelUnavailable(f"block_size {rt.block_size} is not one of the kernel's {list(BLOCK_SIZES)}")
        paged_attention.library()
        return library()

    return unless_built(rt, "fused_layer_rows", 0, "the kernel is unavailable, using 0 (one op per piece)", build)


def _infer_shape(x, attention_norm, ffn_norm, eps, heads, wqkv, wo, w13, w2, kv_cache, rope_cos, rope_sin,
                 block_tables, context_lens):
    def check(name: str, ok: bool, rule: str, got) -> None:
        if not ok:
            raise ValueError(f"decode layer input '{name}': {rule}, got {list(got)}")

    check("x", len(x) == 2, "must be [B, hidden]", x)
    b, h = x
    check("rope_cos", len(rope_cos) == 2 and rope_cos[1] % 2 == 0, "must be [positions, head_dim], head_dim even",
          rope_cos)
    d = rope_cos[1]
    check("rope_sin", list(rope_sin) == list(rope_cos), f"must have rope_cos's shape {list(rope_cos)}", rope_sin)
    for name, shape in (("attention_norm", attention_norm), ("ffn_norm", ffn_norm)):
        check(name, list(shape) == [h], f"must be [hidden] = [{h}]", shape)
    check("eps", list(eps) == [1], "must be [1]", eps)
    check("heads", list(heads) == [2], "must be [2] (query heads, KV heads)", heads)
    check("w2", len(w2) == 3 and w2[0] == panel_count(h) and w2[2] == PANEL,
          f"must be panels [ceil(hidden / {PANEL}), ffn, {PANEL}]", w2)
    f = w2[1]
    check("wo", list(wo) == [panel_count(h), h, PANEL], f"must be panels [{panel_count(h)}, {h}, {PANEL}]", wo)
    check("w13", list(w13) == [panel_count(2 * f), h, PANEL], f"must be panels [{panel_count(2 * f)}, {h}, {PANEL}]", w13)
    check("wqkv", len(wqkv) == 3 and list(wqkv[1:]) == [h, PANEL], f"must be panels [P, {h}, {PANEL}]", wqkv)
    check("kv_cache", len(kv_cache) == 2 and kv_cache[1] == d, f"must be [rows, head_dim = {d}]", kv_cache)
    check("block_tables", len(block_tables) == 2 and block_tables[0] == b, f"must be [B, M] with B = {b}",
          block_tables)
    check("context_lens", list(context_lens) == [b], f"must be [B] = [{b}]", context_lens)
    return [b, h]


def _infer_dtype(x, attention_norm, ffn_norm, eps, heads, wqkv, wo, w13, w2, kv_cache, rope_cos, rope_sin,
                 block_tables, context_lens):
    import mindspore as ms

    named = dict(x=x, attention_norm=attention_norm, ffn_norm=ffn_norm, eps=eps, heads=heads, wqkv=wqkv, wo=wo,
                 w13=w13, w2=w2, kv_cache=kv_cache, rope_cos=rope_cos, rope_sin=rope_sin,
                 block_tables=block_tables, context_lens=context_lens)
    for name, dtype in named.items():
        want = ms.int32 if name in ("heads", "block_tables", "context_lens") else ms.float32
        element = element_type(dtype)
        if element != want:
            raise ValueError(f"decode layer input '{name}': must be {want}, got {element}")
    return x


def decode_layer_op(block_size: int):
    """A new primitive running one decoder layer for caches of `block_size` (builds the library on
    first use)."""
    from mindspore import ops

    if block_size not in BLOCK_SIZES:
        raise ValueError(f"decode layer: block_size must be one of {list(BLOCK_SIZES)}, got {block_size}")
    return ops.Custom(f"{library().path}:{FUNCTION.format(block_size)}", out_shape=_infer_shape,
                      out_dtype=_infer_dtype, func_type="aot")
