"""The small-batch matmul CPU kernel and the LM head's argmax as MindSpore primitives
(`ops.Custom`, func_type "aot").

`small_matmul_op(n)(x, panels)` with x [M, K] float32 and a weight packed by `pack_panels(w)`
([K, N] -> [ceil(N / 32), K, 32]) returns x @ w [M, N]. Decode graphs of at most
`RuntimeConfig.small_matmul_rows` rows use it for every linear layer and the LM head; larger
graphs keep MindSpore's MatMul: the kernel is correct for any row count and faster alone, but
in the model it gave no served gain from 16 rows up (experiments/2026-12-01-matmul-tiles).

`argmax_op()(x)` with x [N, V] float32 returns (ids int32 [N], best float32 [N]): each row's
largest value and its lowest index, as `ops.max(x, 1)` gives them. The model runs it after the LM
head wherever the head runs the panel kernel.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import RuntimeConfig
from .build import Library, element_type, loaded_library, unless_built

SOURCE = Path(__file__).with_name("small_matmul.cpp")
FUNCTION = "SmallMatMul"
ARGMAX = "ArgMaxRows"
PANEL = 32


def library() -> Library:
    """The kernel library, built on first use; raises KernelUnavailable with the reason."""
    return loaded_library(SOURCE, (FUNCTION, ARGMAX))


def resolve_small_matmul(rt: RuntimeConfig) -> RuntimeConfig:
    """`rt` itself, or, when it asks for this kernel and the kernel cannot be built here, `rt`
    with `small_matmul_rows: 0` (MindSpore's MatMul everywhere) and a warning saying why."""
    if rt.small_matmul_rows == 0:
        return rt
    return unless_built(rt, "small_matmul_rows", 0, "the kernel is unavailable, using 0 (MatMul)", library)


def panel_count(n: int) -> int:
    """Panels of a packed weight with n columns: ceil(n / 32)."""
    return -(-n // PANEL)


def pack_panels(w: np.ndarray) -> np.ndarray:
    """[K, N] -> [ceil(N / 32), K, 32]: column panels of 32, zero-padded past N."""
    k, n = w.shape
    p = panel_count(n)
    padded = np.zeros((k, p * PANEL), np.float32)
    padded[:, :n] = w
    return np.ascontiguousarray(padded.reshape(k, p, PANEL).transpose(1, 0, 2))


def small_matmul_op(n: int):
    """A new primitive computing x @ w with an output of `n` columns (w packed by pack_panels)."""
    from mindspore import ops

    def infer_shape(x, panels):
        if len(x) != 2 or len(panels) != 3 or panels[1] != x[1] or panels[2] != PANEL or panel_count(n) != panels[0]:
            raise ValueError(f"small matmul: x must be [M, K] and the weight [ceil({n} / {PANEL}), K, {PANEL}], "
                             f"got {list(x)} and {list(panels)}")
        return [x[0], n]

    def infer_dtype(x, panels):
        return x

    return ops.Custom(f"{library().path}:{FUNCTION}", out_shape=infer_shape, out_dtype=infer_dtype, func_type="aot")


def argmax_op():
    """A new primitive: (ids, best) of each row of a [N, V] float32 input."""
    import mindspore as ms
    from mindspore import ops

    def infer_shape(x):
        if len(x) != 2:
            raise ValueError(f"argmax: x must be [N, V], got {list(x)}")
        return [x[0]], [x[0]]

    def infer_dtype(x):
        if element_type(x) != ms.float32:
            raise ValueError(f"argmax: x must be float32, got {element_type(x)}")
        return ms.int32, x

    return ops.Custom(f"{library().path}:{ARGMAX}", out_shape=infer_shape, out_dtype=infer_dtype, func_type="aot")
