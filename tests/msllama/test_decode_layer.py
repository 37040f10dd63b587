"""The whole-decoder-layer CPU kernel: bit for bit the per-op layer made of the same C++ pieces
(small-batch matmul, paged attention, fused norm and SwiGLU), close to MindSpore's MatMul path at
larger batches, cache writes identical, bad input, the config switch (its fallback without a
compiler: test_paged_kernel.py), and test_model.py's reference tests re-run with the per-op layer."""
from __future__ import annotations

import numpy as np
import pytest
from mindspore import Tensor

from msllama.config import ALL_ROWS, ConfigError, LlamaConfig, RuntimeConfig, parse_predict_config
from msllama.kernels import decode_layer_op, pack_panels
from msllama.runner import Ladder, ModelRunner, StepInput
from msllama.sampling import SamplingBatch
from msllama.weights import random_weights

import test_model
from test_model import test_one_sequence_is_batch_invariant as test_per_op_layer_is_batch_invariant
from test_model import (
    test_paged_model_matches_reference_over_prefill_and_50_decode_steps as test_per_op_layer_matches_reference)

pytestmark = pytest.mark.usefixtures("kernels_built")

BS = 16
BLOCKS = 80
CFG = LlamaConfig(vocab_size=512, hidden_size=128, num_layers=2, num_heads=8, n_kv_heads=2, intermediate_size=352,
                  seq_length=512)
LADDER = Ladder(decode_batches=(1, 3, 8, 16), decode_blocks=(4,), prefill_tokens=(8, 64, 512),
                prefill_context_factors=(1,), prefill_min_rows=8)


@pytest.fixture(scope="module", params=[2, 8], ids=["gqa", "mha"])
def pair(request):
    """test_model.py's runners with one op per piece of the layer (fused_layer_rows 0)."""
    return test_model.make_runner(request.param, fused_layer_rows=0)


@pytest.fixture(scope="module")
def gqa():
    return test_model.make_runner(2, fused_layer_rows=0)


def runner(**runtime) -> ModelRunner:
    return ModelRunner(CFG, RuntimeConfig(num_blocks=BLOCKS, block_size=BS, **runtime), random_weights(CFG, seed=5),
                       LADDER)


def test_layer_op_is_the_per_op_layer_bit_for_bit_and_close_to_matmul():
    fused = runner()                                                # the default: one op per layer
    per_op = runner(fused_layer_rows=0, small_matmul_rows=ALL_ROWS, fused_pointwise_rows=ALL_ROWS)  # same pieces
    matmul = runner(fused_layer_rows=0)                             # MindSpore's MatMul above 8 rows
    assert fused.model.layers[0].layer_op is not None and per_op.model.layers[0].layer_op is None
    rng = np.random.default_rng(5)
    lens = rng.integers(1, 21, 16).astype(np.int32)
    tables = (1 + np.arange(16 * 4, dtype=np.int32)).reshape(16, 4)
    steps = []
    for rows in (slice(0, 3), slice(3, 16)):                        # prefills of 3 and 13 prompts
        ls = lens[rows].copy()
        last = (np.cumsum(ls) - 1).astype(np.int32)
        steps.append(StepInput(True, rng.integers(3, CFG.vocab_size, int(ls.sum()), dtype=np.int32), ls, ls,
                               tables[rows], last, SamplingBatch.greedy(len(ls)), last))
    for b in (1, 3, 8, 16):                                         # decode steps, each a token further
        lens[:b] += 1
        ids = np.arange(b, dtype=np.int32)
        steps.append(StepInput(False, rng.integers(3, CFG.vocab_size, b, dtype=np.int32), np.ones(b, np.int32),
                               lens[:b].copy(), tables[:b], ids, SamplingBatch.greedy(b), ids))
    for step in steps:
        a, b, c = (r.step(step).logits for r in (fused, per_op, matmul))
        np.testing.assert_array_equal(a, b)
        assert np.abs(a - c).max() < 1e-4
    for la, lb, lc in zip(fused.model.layers, per_op.model.layers, matmul.model.layers):
        # the same rows written, the trash block 0 aside: the layer op skips padded rows, which write there
        fa, fb, fc = (layer.kv_cache.asnumpy() for layer in (la, lb, lc))
        real = slice(fa.shape[0] // BLOCKS, None)
        np.testing.assert_array_equal(fa[real], fb[real])
        assert np.abs(fa[real] - fc[real]).max() < 1e-4


def test_padded_rows_are_not_computed():
    # A step padded to its bucket: the per-op layer computes the padded rows (they write the trash
    # block 0); the layer op skips them, so block 0 stays as it was, and the real rows' logits are
    # the same bit for bit.
    fused = runner()
    per_op = runner(fused_layer_rows=0, small_matmul_rows=ALL_ROWS, fused_pointwise_rows=ALL_ROWS)
    lens = np.array([5, 3], np.int32)                               # 8 tokens: the 8-token bucket, unpadded
    tables = np.array([[1, 2, 0, 0], [3, 4, 0, 0]], np.int32)
    prefill = StepInput(True, np.arange(3, 11, dtype=np.int32), lens, lens, tables, np.array([4, 7], np.int32),
                        SamplingBatch.greedy(2), np.array([4, 7], np.int32))
    decode = StepInput(False, np.array([11, 12], np.int32), np.ones(2, np.int32), lens + 1, tables,
                       np.arange(2, dtype=np.int32), SamplingBatch.greedy(2), np.arange(2, dtype=np.int32))
    for step in (prefill, decode):                                  # the decode step: 2 rows in bucket 3
        np.testing.assert_array_equal(fused.step(step).logits, per_op.step(step).logits)
    trash = slice(0, fused.model.layers[0].kv_cache.shape[0] // BLOCKS)
    for lf, lp in zip(fused.model.layers, per_op.model.layers):
        assert not lf.kv_cache.asnumpy()[trash].any()
        assert lp.kv_cache.asnumpy()[trash].any()


def ones(*shape):
    return Tensor(np.ones(shape, np.float32))


def test_bad_input_is_a_clear_error():
    """The op alone on a layer of H = 32 (2 heads of 16, 1 KV head), F = 40, a 3-block cache."""
    op = decode_layer_op(BS)
    fixed = dict(attention_norm=ones(32), ffn_norm=ones(32), wo=Tensor(pack_panels(np.eye(32, dtype=np.float32))),
                 w2=Tensor(pack_panels(np.ones((40, 32), np.float32))),
                 kv_cache=Tensor(np.zeros((3 * 2 * BS, 16), np.float32)), rope_cos=ones(40, 16), rope_sin=ones(40, 16))
    good = dict(x=ones(1, 32), eps=ones(1), heads=Tensor(np.array([2, 1], np.int32)),
                wqkv=Tensor(pack_panels(np.ones((32, 64), np.float32))),
                w13=Tensor(pack_panels(np.ones((32, 80), np.float32))),
                block_tables=Tensor(np.array([[1, 2]], np.int32)), context_lens=Tensor(np.array([3], np.int32)))
    order = ("x", "attention_norm", "ffn_norm", "eps", "heads", "wqkv", "wo", "w13", "w2", "kv_cache", "rope_cos",
             "rope_sin", "block_tables", "context_lens")

    def layer(**inputs):
        named = {**fixed, **good, **inputs}
        return op(*(named[k] for k in order))

    assert layer().shape == (1, 32)

    def fails(error, match, **bad):
        with pytest.raises(error, match=match):
            layer(**bad)

    fails(ValueError, r"input 'heads': must be \[2\] \(query heads, KV heads\)", heads=Tensor(np.array([2], np.int32)))
    fails(ValueError, "input 'heads': must be Int32", heads=Tensor(np.array([2, 1], np.int64)))
    fails(ValueError, r"input 'w13': must be panels \[3, 32, 32\]",
          w13=Tensor(pack_panels(np.ones((32, 128), np.float32))))
    fails(ValueError, r"input 'eps': must be \[1\]", eps=ones(2))
    fails(ValueError, r"input 'context_lens': must be \[B\] = \[1\]", context_lens=Tensor(np.array([3, 3], np.int32)))
    # only the run time knows: heads that do not fit the shapes (3), a block outside the cache (4),
    # a context past the table (6); the kernel refuses instead of reading or writing out of bounds
    fails(RuntimeError, "is 3", heads=Tensor(np.array([4, 1], np.int32)))
    fails(RuntimeError, "is 4", block_tables=Tensor(np.array([[3, 0]], np.int32)))
    fails(RuntimeError, "is 6", context_lens=Tensor(np.array([2 * BS + 1], np.int32)))
    with pytest.raises(ValueError, match=r"block_size must be one of \[8, 16, 32, 64, 128\], got 12"):
        decode_layer_op(12)


def test_config_switch():
    assert RuntimeConfig().fused_layer_rows == ALL_ROWS
    assert RuntimeConfig(attention_kernel="basic").fused_layer_rows == 0
    assert RuntimeConfig(device_target="Ascend", compute_dtype="float16").fused_layer_rows == 0
    with pytest.raises(ConfigError, match="'fused_layer_rows': must be >= 0"):
        RuntimeConfig(fused_layer_rows=-2)
    with pytest.raises(ConfigError, match="'fused_layer_rows': must be 0 unless attention_kernel is cpu_paged"):
        RuntimeConfig(attention_kernel="basic", fused_layer_rows=8)
    assert parse_predict_config({"model": {"model_config": {"fused_layer_rows": 0}}}).runtime.fused_layer_rows == 0
    tail = runner(fused_layer_rows=0).model
    assert tail.lm_head.small_rows == 8 and tail.norm_out.fused_rows == 8     # the per-op defaults
    tail = runner().model
    assert tail.lm_head.small_rows == ALL_ROWS and tail.norm_out.fused_rows == ALL_ROWS  # after the layer ops
