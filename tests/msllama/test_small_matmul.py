"""The small-batch matmul CPU kernel: against float64 numpy, row independence, bad input, the
panel packing and the config switch (its fallback without a compiler: test_paged_kernel.py)."""
from __future__ import annotations

import numpy as np
import pytest
from mindspore import Parameter, Tensor, nn

from msllama.config import ConfigError, RuntimeConfig, parse_predict_config
from msllama.kernels import pack_panels, small_matmul_op


pytestmark = pytest.mark.usefixtures("kernels_built")


class Net(nn.Cell):
    def __init__(self, w: np.ndarray):
        super().__init__()
        self.panels = Parameter(Tensor(pack_panels(w)), name="panels", requires_grad=False)
        self.mm = small_matmul_op(w.shape[1])

    def construct(self, x):
        return self.mm(x, self.panels)


def test_pack_panels_layout():
    w = np.arange(3 * 40, dtype=np.float32).reshape(3, 40)
    p = pack_panels(w)
    assert p.shape == (2, 3, 32)
    np.testing.assert_array_equal(p[0], w[:, :32])
    np.testing.assert_array_equal(p[1, :, :8], w[:, 32:])
    assert not p[1, :, 8:].any()


# Row counts: one tile of 1-8 rows; tiles of 6 with a remainder; two chunks of 96 rows and a
# remainder of 11 (6 + 5). Column counts: a partial panel, an odd number of panels (a pair and a
# single one), whole pairs.
@pytest.mark.parametrize("k,n", [(37, 70), (512, 1536), (64, 32), (130, 100)])
def test_matches_float64_and_rows_do_not_depend_on_the_batch(k, n):
    rng = np.random.default_rng(k)
    w = rng.standard_normal((k, n)).astype(np.float32)
    x = rng.standard_normal((203, k)).astype(np.float32)
    net = Net(w)
    outs = {m: net(Tensor(x[:m])).asnumpy() for m in (1, 3, 4, 5, 8, 9, 13, 96, 203)}
    expected = x.astype(np.float64) @ w.astype(np.float64)
    for m, out in outs.items():
        assert out.shape == (m, n)
        assert np.abs(out - expected[:m]).max() < 1e-4 * np.sqrt(k)
        np.testing.assert_array_equal(out, outs[203][:m])


def test_bad_shapes_are_a_clear_error():
    net = Net(np.zeros((8, 40), np.float32))
    with pytest.raises(ValueError, match=r"small matmul: x must be \[M, K\] and the weight \[ceil\(40 / 32\), K, 32\]"):
        net(Tensor(np.zeros((2, 9), np.float32)))


def test_config_switch():
    assert RuntimeConfig().small_matmul_rows == 8
    assert RuntimeConfig(small_matmul_rows=0).small_matmul_rows == 0
    assert RuntimeConfig(device_target="Ascend", compute_dtype="float16").small_matmul_rows == 0
    with pytest.raises(ConfigError, match="'small_matmul_rows': must be >= 0"):
        RuntimeConfig(small_matmul_rows=-2)
    with pytest.raises(ConfigError, match="'small_matmul_rows': must be 0 on Ascend"):
        RuntimeConfig(device_target="Ascend", compute_dtype="float16", small_matmul_rows=8)
    # the predict YAML's model_config key
    assert parse_predict_config({"model": {"model_config": {"small_matmul_rows": 0}}}).runtime.small_matmul_rows == 0
    with pytest.raises(ConfigError, match="'small_matmul_rows': expected int, got 'many'"):
        parse_predict_config({"model": {"model_config": {"small_matmul_rows": "many"}}})
