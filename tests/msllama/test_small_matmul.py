"""The small-batch matmul CPU kernel: against float64 numpy, row independence, bad input, the
panel packing and the config switch (its fallback without a compiler: test_paged_kernel.py); the
LM head's argmax in the same library against MindSpore's."""
from __future__ import annotations

import ctypes
import os
import threading
import time

import numpy as np
import pytest
from mindspore import Parameter, Tensor, nn, ops

from msllama.config import ConfigError, RuntimeConfig, parse_predict_config
from msllama.kernels import pack_panels, small_matmul_op
from msllama.kernels.small_matmul import ARGMAX, FUNCTION, argmax_op, library


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


# Row counts: 1-8 rows in one tile (AVX2: in one to three tiles over each panel); tiles of 6 with a
# remainder; two chunks of 96 rows and a remainder of 11 (6 + 5). Column counts: a partial panel,
# an odd number of panels (a pair and a single one), whole pairs.
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


@pytest.mark.parametrize("m", [4, 13, 203])
def test_results_do_not_depend_on_the_threads(m, monkeypatch):
    # Threads share the column groups and take chunks of each other's once done with their own
    # (StealingRanges): more threads than CPUs makes them take over each other's work at random.
    rng = np.random.default_rng(m)
    w = rng.standard_normal((512, 3000)).astype(np.float32)
    x = rng.standard_normal((m, 512)).astype(np.float32)
    panels = pack_panels(w)
    outs = {}
    for threads in ("1", "2", "3", "7"):
        monkeypatch.setenv("MSLLAMA_KERNEL_THREADS", threads)  # read by the kernel at every call
        outs[threads] = [_call_directly(x, panels, 3000) for _ in range(5)]
    for runs in outs.values():
        for out in runs:
            np.testing.assert_array_equal(out, outs["1"][0])
    assert np.abs(outs["1"][0] - x.astype(np.float64) @ w.astype(np.float64)).max() < 1e-4 * np.sqrt(512)


def _call_directly(x: np.ndarray, panels: np.ndarray, n: int, y: np.ndarray | None = None) -> np.ndarray:
    """The library's entry point through ctypes, as MindSpore calls it (inputs, then the output,
    by default a new zero array)."""
    entry = getattr(ctypes.CDLL(str(library().path)), FUNCTION)
    y = np.zeros((x.shape[0], n), np.float32) if y is None else y
    arrays = (x, panels, y)
    dims = [(ctypes.c_int64 * a.ndim)(*a.shape) for a in arrays]
    params = (ctypes.c_void_p * 3)(*(a.ctypes.data for a in arrays))
    shapes = (ctypes.POINTER(ctypes.c_int64) * 3)(*(ctypes.cast(d, ctypes.POINTER(ctypes.c_int64)) for d in dims))
    rc = entry(3, params, (ctypes.c_int * 3)(2, 3, 2), shapes, (ctypes.c_char_p * 3)(*[b"float32"] * 3), None, None)
    assert rc == 0
    return y


def test_trailing_zero_rows_are_zero_without_being_computed():
    # The decode layer op leaves a bucket's padded rows zero; the LM head's matmul skips such rows at
    # the end of x. Whatever the output buffer held, they come out +0.0, as a computed zero row does,
    # and a zero row before a nonzero one is computed as usual.
    rng = np.random.default_rng(11)
    w = rng.standard_normal((512, 1000)).astype(np.float32)
    x = rng.standard_normal((13, 512)).astype(np.float32)
    x[4] = 0.0
    x[9:] = 0.0
    panels = pack_panels(w)
    y = _call_directly(x, panels, 1000, np.full((13, 1000), np.nan, np.float32))
    np.testing.assert_array_equal(y[:9], _call_directly(x[:9], panels, 1000))
    assert not y[9:].any() and not np.signbit(y[9:]).any()
    assert not y[4].any() and np.abs(y[:4] - x[:4].astype(np.float64) @ w).max() < 1e-4 * np.sqrt(512)


def test_helper_threads_serve_concurrent_callers_and_forked_children():
    # The kernel's helpers are long-lived threads: callers that overlap must not wait on each other
    # or get each other's ranges, and a child forked after they started has none of them.
    rng = np.random.default_rng(3)
    w = rng.standard_normal((512, 1536)).astype(np.float32)
    xs = [rng.standard_normal((64, 512)).astype(np.float32) for _ in range(4)]
    panels = pack_panels(w)
    expected = [Net(w)(Tensor(x)).asnumpy() for x in xs]
    results: dict[int, list[np.ndarray]] = {}

    def caller(i: int) -> None:
        results[i] = [_call_directly(xs[i], panels, 1536) for _ in range(20)]

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    for i in range(4):
        for out in results[i]:
            np.testing.assert_array_equal(out, expected[i])

    pid = os.fork()
    if pid == 0:  # the child: exit code 0 only if the kernel still answers, and correctly
        try:
            os._exit(0 if np.array_equal(_call_directly(xs[0], panels, 1536), expected[0]) else 1)
        finally:
            os._exit(2)
    deadline = time.monotonic() + 60
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child's kernel call hung")
    assert os.waitstatus_to_exitcode(done[1]) == 0


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


class ArgMaxPair(nn.Cell):
    def __init__(self):
        super().__init__()
        self.argmax = argmax_op()

    def construct(self, x):
        ids, best = self.argmax(x)
        top, where = ops.max(x, 1)
        return ids, best, where, top


@pytest.mark.parametrize("rows,n", [(1, 32000), (3, 37), (33, 32000), (5, 16), (4, 7), (2, 1)])
def test_argmax_matches_mindspore_with_the_lowest_index_on_ties(rows, n):
    rng = np.random.default_rng(rows * 1000 + n)
    x = np.round(rng.standard_normal((rows, n)) * 2).astype(np.float32) / 2  # values repeat: ties
    x[0, -1] = x[0].max() + 1  # the largest value in the scalar tail of a row
    if rows > 2:
        x[1, :] = x[1].max()  # a row all equal: index 0
        x[2, :] = -np.inf
    ids, best, where, top = (t.asnumpy() for t in ArgMaxPair()(Tensor(x)))
    assert ids.dtype == np.int32 and best.dtype == np.float32
    np.testing.assert_array_equal(ids, where.astype(np.int32))
    np.testing.assert_array_equal(best, top)
    np.testing.assert_array_equal(ids, x.argmax(axis=1))  # numpy too takes the first of equal ones


def test_argmax_bad_input():
    with pytest.raises(ValueError, match=r"argmax: x must be \[N, V\], got \[4\]"):
        ArgMaxPair()(Tensor(np.zeros(4, np.float32)))
    fn = getattr(ctypes.CDLL(str(library().path)), ARGMAX)
    x, ids, best = np.zeros((2, 8), np.float32), np.zeros(3, np.int32), np.zeros(2, np.float32)
    args = (ctypes.c_void_p * 3)(x.ctypes.data, ids.ctypes.data, best.ctypes.data)
    shapes = [(ctypes.c_int64 * a.ndim)(*a.shape) for a in (x, ids, best)]
    ndims = (ctypes.c_int * 3)(2, 1, 1)
    pshapes = (ctypes.POINTER(ctypes.c_int64) * 3)(*[ctypes.cast(s, ctypes.POINTER(ctypes.c_int64)) for s in shapes])
    dtypes = (ctypes.c_char_p * 3)(b"float32", b"int32", b"float32")
    assert fn(3, args, ndims, pshapes, dtypes, None, None) == 3  # ids of 3 rows for 2
    dtypes = (ctypes.c_char_p * 3)(b"float32", b"float32", b"float32")
    assert fn(3, args, ndims, pshapes, dtypes, None, None) == 2  # ids must be int32
