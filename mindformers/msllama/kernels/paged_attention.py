"""The paged decode-attention CPU kernel as a MindSpore primitive (`ops.Custom`, func_type "aot").

`decode_attention_op()(q, k_cache, v_cache, slots, context_lens)` with
q [B, kv_heads, group, D] float32 (already multiplied by the softmax scale), k/v caches
[kv_heads * S, D] float32 (row = h * S + slot), slots [B, L] int32 and context_lens [B] int32
returns [B, kv_heads, group, D]: each query attends to its sequence's first context_lens[b] slots
only (context_lens is clipped to [0, L]; 0 gives zeros). Shapes and dtypes are checked when the
graph compiles, with errors naming the input; at run time the kernel returns error code 4 (which
MindSpore raises as a RuntimeError) if a slot within a context lies outside [0, S).
"""
from __future__ import annotations

import ctypes
import dataclasses
import functools
import hashlib
import warnings
from pathlib import Path

from ..config import RuntimeConfig
from .build import KernelUnavailable, Library, build_library

SOURCE = Path(__file__).with_name("paged_attention.cpp")
FUNCTION = "PagedDecodeAttention"
KERNEL_NAME = "cpu_paged"  # the RuntimeConfig.attention_kernel value that selects this kernel


@functools.lru_cache(maxsize=1)
def _library_or_error() -> Library | KernelUnavailable:
    # A failure is remembered too: every layer asks, and a failing compile should run once.
    try:
        lib = build_library(SOURCE)
        getattr(ctypes.CDLL(str(lib.path)), FUNCTION)  # fails here, not inside a graph launch
        return lib
    except KernelUnavailable as e:
        return e
    except (OSError, AttributeError) as e:
        return KernelUnavailable(f"cannot load {FUNCTION} from the built library: {e}")


def library() -> Library:
    """The kernel library, built on first use; raises KernelUnavailable with the reason."""
    result = _library_or_error()
    if isinstance(result, KernelUnavailable):
        raise result
    return result


def resolve_attention_kernel(rt: RuntimeConfig) -> RuntimeConfig:
    """`rt` itself, or, when it asks for this kernel and the kernel cannot be built here, `rt`
    with the basic-op attention and a warning saying why."""
    if rt.attention_kernel != KERNEL_NAME:
        return rt
    try:
        library()
    except KernelUnavailable as e:
        warnings.warn(f"config key 'attention_kernel': '{KERNEL_NAME}' is unavailable, using 'basic' "
                      f"instead: {e}", RuntimeWarning, stacklevel=2)
        return dataclasses.replace(rt, attention_kernel="basic")
    return rt


def graph_fingerprint(rt: RuntimeConfig) -> str:
    """What the decode graphs of `rt` depend on beyond model.py: for this kernel the library's
    name (it hashes source, flags, compiler and CPU) and the wrapper code; "" otherwise. Part of
    the graph compile-cache key, so a cached graph never calls a stale or missing library."""
    if rt.attention_kernel != KERNEL_NAME:
        return ""
    h = hashlib.sha256(library().path.name.encode())
    for path in sorted(Path(__file__).parent.glob("*.py")):
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _check(name: str, ok: bool, rule: str) -> None:
    if not ok:
        raise ValueError(f"paged decode attention input '{name}': {rule}")


def _infer_shape(q, k_cache, v_cache, slots, context_lens):
    _check("q", len(q) == 4, f"must be [B, kv_heads, group, head_dim], got {list(q)}")
    b, kv_heads, group, head_dim = q
    _check("q", group <= 64, f"at most 64 query heads per KV head, got {group}")
    for name, shape in (("k_cache", k_cache), ("v_cache", v_cache)):
        _check(name, len(shape) == 2 and shape[1] == head_dim and shape[0] % kv_heads == 0,
               f"must be [kv_heads * slots, head_dim] = [{kv_heads} * S, {head_dim}], got {list(shape)}")
    _check("v_cache", list(v_cache) == list(k_cache), f"must have the shape of k_cache {list(k_cache)}")
    _check("slots", len(slots) == 2 and slots[0] == b, f"must be [B, L] with B = {b}, got {list(slots)}")
    _check("context_lens", list(context_lens) == [b], f"must be [B] = [{b}], got {list(context_lens)}")
    return q


def _infer_dtype(q, k_cache, v_cache, slots, context_lens):
    import mindspore as ms

    for name, dtype, want in (("q", q, ms.float32), ("k_cache", k_cache, ms.float32),
                              ("v_cache", v_cache, ms.float32), ("slots", slots, ms.int32),
                              ("context_lens", context_lens, ms.int32)):
        element = dtype.element_type() if isinstance(dtype, ms.TensorType) else dtype
        _check(name, element == want, f"must be {want}, got {element}")
    return q


def decode_attention_op():
    """A new primitive instance running the kernel (builds the library on first use)."""
    from mindspore import ops

    return ops.Custom(f"{library().path}:{FUNCTION}", out_shape=_infer_shape, out_dtype=_infer_dtype,
                      func_type="aot")
