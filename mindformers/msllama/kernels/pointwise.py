"""The row-wise CPU kernels (RMSNorm, SiLU * up) as MindSpore primitives (`ops.Custom`, "aot").

`rms_norm_op()(x, weight, eps)` with x [N, H], weight [H] and eps [1] float32 returns the
RMS-normalised x times weight; `swiglu_op()(gate_up)` with gate_up [N, 2F] returns
silu(gate_up[:, :F]) * gate_up[:, F:]. The model uses them in graphs of at most
`RuntimeConfig.fused_pointwise_rows` rows.
"""
from __future__ import annotations

from pathlib import Path

from ..config import RuntimeConfig
from .build import Library, element_type, loaded_library, unless_built

SOURCE = Path(__file__).with_name("pointwise.cpp")
FUNCTIONS = ("RmsNorm", "SwiGlu")


def library() -> Library:
    """The kernel library, built on first use; raises KernelUnavailable with the reason."""
    return loaded_library(SOURCE, FUNCTIONS)


def resolve_pointwise(rt: RuntimeConfig) -> RuntimeConfig:
    """`rt` itself, or, when it asks for these kernels and they cannot be built here, `rt` with
    `fused_pointwise_rows: 0` (MindSpore's basic ops) and a warning saying why."""
    if not rt.fused_pointwise_rows:
        return rt
    return unless_built(rt, "fused_pointwise_rows", 0, "the kernels are unavailable, using 0 (basic ops)", library)


def _float32(*dtypes):
    import mindspore as ms

    for d in dtypes:
        element = element_type(d)
        if element != ms.float32:
            raise ValueError(f"fused pointwise kernels take float32 inputs, got {element}")
    return dtypes[0]


def rms_norm_op():
    from mindspore import ops

    def infer_shape(x, weight, eps):
        if len(x) != 2 or list(weight) != [x[1]] or list(eps) != [1]:
            raise ValueError(f"rms norm: x must be [N, H], weight [H] and eps [1], got {list(x)}, {list(weight)}, "
                             f"{list(eps)}")
        return x

    return ops.Custom(f"{library().path}:RmsNorm", out_shape=infer_shape, out_dtype=_float32, func_type="aot")


def swiglu_op():
    from mindspore import ops

    def infer_shape(gate_up):
        if len(gate_up) != 2 or gate_up[1] % 2:
            raise ValueError(f"swiglu: gate_up must be [N, 2F], got {list(gate_up)}")
        return [gate_up[0], gate_up[1] // 2]

    return ops.Custom(f"{library().path}:SwiGlu", out_shape=infer_shape, out_dtype=_float32, func_type="aot")
