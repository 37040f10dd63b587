"""Custom CPU kernels (C++ compiled at first use, run as MindSpore `aot` Custom ops)."""
from __future__ import annotations

import hashlib
from pathlib import Path

from ..config import RuntimeConfig
from . import decode_layer, paged_attention, pointwise, small_matmul
from .build import KernelUnavailable
from .decode_layer import decode_layer_op, resolve_decode_layer
from .paged_attention import decode_attention_op, resolve_attention_kernel
from .pointwise import resolve_pointwise, rms_norm_op, swiglu_op
from .small_matmul import argmax_op, pack_panels, resolve_small_matmul, small_matmul_op

__all__ = ["KernelUnavailable", "argmax_op", "decode_attention_op", "decode_layer_op", "graph_fingerprint",
           "pack_panels", "resolve_kernels", "rms_norm_op", "small_matmul_op", "swiglu_op"]


def resolve_kernels(rt: RuntimeConfig) -> RuntimeConfig:
    """`rt` with each kernel it asks for that cannot be built here replaced (with a warning). The
    layer op goes first: it needs the attention kernel, so it falls back before that one would."""
    return resolve_pointwise(resolve_small_matmul(resolve_attention_kernel(resolve_decode_layer(rt))))


def graph_fingerprint(rt: RuntimeConfig) -> str:
    """What the graphs of `rt` depend on beyond model.py: the names of the kernel libraries they
    call (each hashes source, flags, compiler and CPU) and the wrapper code; "" when they call
    none. Part of the graph compile-cache key, so a cached graph never calls a stale library."""
    names = ([paged_attention.library().path.name] if rt.attention_kernel == paged_attention.KERNEL_NAME else []) + \
        ([small_matmul.library().path.name] if rt.head_matmul_rows else []) + \
        ([pointwise.library().path.name] if rt.fused_pointwise_rows else []) + \
        ([decode_layer.library().path.name] if rt.fused_layer_rows else [])
    if not names:
        return ""
    h = hashlib.sha256(" ".join(names).encode())
    for path in sorted(Path(__file__).parent.glob("*.py")):
        h.update(path.read_bytes())
    return h.hexdigest()[:16]
