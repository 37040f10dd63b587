"""The row-wise CPU kernels (RMSNorm, SiLU * up): against float64 numpy over extreme values, row
independence, bad input, the config switch and where the model uses them (their fallback without
a compiler: test_paged_kernel.py)."""
from __future__ import annotations

import numpy as np
import pytest
from mindspore import Parameter, Tensor, nn

from msllama.config import ConfigError, LlamaConfig, RuntimeConfig, parse_predict_config
from msllama.kernels import rms_norm_op, swiglu_op
from msllama.model import LlamaModel
from msllama.weights import random_weights

pytestmark = pytest.mark.usefixtures("kernels_built")


class Norm(nn.Cell):
    def __init__(self, w: np.ndarray, eps: float):
        super().__init__()
        self.w = Parameter(Tensor(w), name="w", requires_grad=False)
        self.eps = Tensor(np.array([eps], np.float32))
        self.op = rms_norm_op()

    def construct(self, x):
        return self.op(x, self.w, self.eps)


class SwiGlu(nn.Cell):
    def __init__(self):
        super().__init__()
        self.op = swiglu_op()

    def construct(self, gate_up):
        return self.op(gate_up)


@pytest.mark.parametrize("h", [512, 37])  # whole vectors, and a tail
def test_rms_norm_matches_float64_and_rows_are_independent(h):
    rng = np.random.default_rng(h)
    x = (rng.standard_normal((6, h)) * np.array([1e-3, 1, 30, 1, 1, 1])[:, None]).astype(np.float32)
    w = rng.standard_normal(h).astype(np.float32)
    net = Norm(w, 1e-5)
    out = net(Tensor(x)).asnumpy()
    x64 = x.astype(np.float64)
    expected = x64 / np.sqrt((x64 ** 2).mean(1, keepdims=True) + 1e-5) * w
    assert np.abs(out - expected).max() < 1e-5 * np.abs(expected).max()
    np.testing.assert_array_equal(net(Tensor(x[2:3])).asnumpy()[0], out[2])


@pytest.mark.parametrize("f", [1376, 13])
def test_swiglu_matches_float64_over_the_whole_range(f):
    rng = np.random.default_rng(f)
    gate = (rng.standard_normal((4, f)) * 6).astype(np.float32)
    gate[0, :8] = [-200, -88, -87, -20, 0, 20, 88, 200]          # past exp's range both ways
    up = rng.standard_normal((4, f)).astype(np.float32)
    out = SwiGlu()(Tensor(np.concatenate([gate, up], 1))).asnumpy()
    g = gate.astype(np.float64)
    expected = g / (1 + np.exp(-g)) * up
    assert np.all(np.isfinite(out))
    assert np.abs(out - expected).max() < 2e-6 * max(1.0, np.abs(expected).max())


def test_bad_shapes_are_a_clear_error():
    with pytest.raises(ValueError, match=r"rms norm: x must be \[N, H\], weight \[H\] and eps \[1\]"):
        Norm(np.ones(8, np.float32), 1e-5)(Tensor(np.zeros((2, 9), np.float32)))
    with pytest.raises(ValueError, match=r"swiglu: gate_up must be \[N, 2F\]"):
        SwiGlu()(Tensor(np.zeros((2, 9), np.float32)))


def test_config_switch_and_where_the_model_uses_them():
    assert RuntimeConfig().fused_pointwise_rows == 8
    assert RuntimeConfig(device_target="Ascend", compute_dtype="float16").fused_pointwise_rows == 0
    with pytest.raises(ConfigError, match="'fused_pointwise_rows': must be >= 0"):
        RuntimeConfig(fused_pointwise_rows=-2)
    with pytest.raises(ConfigError, match="'fused_pointwise_rows': must be 0 on Ascend"):
        RuntimeConfig(device_target="Ascend", compute_dtype="float16", fused_pointwise_rows=8)
    assert parse_predict_config({"model": {"model_config": {"fused_pointwise_rows": 0}}}).runtime.fused_pointwise_rows == 0
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, num_layers=1, num_heads=4, intermediate_size=64, seq_length=32)
    # with the per-op layer (the layer op runs its own norms; the final norm then follows it: test_decode_layer.py)
    on = LlamaModel(cfg, RuntimeConfig(num_blocks=4, fused_pointwise_rows=4, fused_layer_rows=0), random_weights(cfg))
    off = LlamaModel(cfg, RuntimeConfig(num_blocks=4, fused_pointwise_rows=0, fused_layer_rows=0), random_weights(cfg))
    assert on.layers[0].swiglu is not None and on.norm_out.fused is not None and on.norm_out.fused_rows == 4
    assert off.layers[0].swiglu is None and off.norm_out.fused is None
