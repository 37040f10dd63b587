"""Custom CPU kernels (C++ compiled at first use, run as MindSpore `aot` Custom ops)."""
from __future__ import annotations

from .build import KernelUnavailable
from .paged_attention import decode_attention_op, graph_fingerprint, resolve_attention_kernel

__all__ = ["KernelUnavailable", "decode_attention_op", "graph_fingerprint", "resolve_attention_kernel"]
