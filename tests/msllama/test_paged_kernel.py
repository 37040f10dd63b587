"""The cpu_paged decode-attention kernel: against float64 numpy inside a GRAPH_MODE graph (the
kernel rotates q/k and writes the step's rows into the cache Parameter in place), its contract at the edges, bad
input, the library cache, the fallback of both kernels when no compiler exists, the config
switch, and the whole model with the kernel against the basic-op attention (test_model.py's reference and batch-invariance tests re-run with basic ops)."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from mindspore import Parameter, Tensor, nn

from msllama.config import ConfigError, LlamaConfig, RuntimeConfig
from msllama.kernels.build import build_library
from msllama.kernels.paged_attention import SOURCE, decode_attention_op
from msllama.model import DecodeStep, LlamaModel
from msllama.runner import Ladder, ModelRunner, StepInput
from msllama.sampling import SamplingBatch
from msllama.weights import random_weights

import test_model  # its model tests run by default with the kernel; some are re-run below with basic ops
from test_model import test_one_sequence_is_batch_invariant as test_basic_attention_is_batch_invariant
from test_model import (
    test_paged_model_matches_reference_over_prefill_and_50_decode_steps as test_basic_attention_matches_reference)

BS = 16          # block size
NUM_BLOCKS = 40  # block 0 is the trash block
HEAD_DIM = 32


pytestmark = pytest.mark.usefixtures("kernels_built")


class Attend(nn.Cell):
    """As DecoderLayer.decode with the kernel: the cache is a Parameter, the kernel writes it."""

    def __init__(self, cache: np.ndarray, heads: int, kv_heads: int):
        super().__init__()
        self.kv_cache = Parameter(Tensor(cache), name="kv_cache", requires_grad=False)
        self.attend = decode_attention_op(BS, heads, kv_heads)

    def construct(self, qkv, cos, sin, tables, context_lens):
        return self.attend(qkv, self.kv_cache, cos, sin, tables, context_lens)


def rope(head_dim: int, positions: int = 600) -> tuple[np.ndarray, np.ndarray]:
    """float64 rotate-half tables [positions, head_dim] (as model.rope_tables)."""
    inv_freq = 1.0 / (10000.0 ** (np.arange(0, head_dim, 2) / head_dim))
    angles = np.arange(positions)[:, None] * inv_freq[None, :]
    return np.tile(np.cos(angles), 2), np.tile(np.sin(angles), 2)


def rotate(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, positions) -> np.ndarray:
    """float64 rotary embedding of x [B, heads, D] at positions [B]."""
    half = x.shape[-1] // 2
    x = x.astype(np.float64)
    rotated = np.concatenate([-x[..., half:], x[..., :half]], -1)
    return x * cos[positions][:, None] + rotated * sin[positions][:, None]


def rows(tables: np.ndarray, b: int, n: int, kind: int, h: int, kv_heads: int) -> np.ndarray:
    """Block-major cache rows of sequence b's first n positions, K (kind 0) or V (1), KV head h."""
    pos = np.arange(n)
    return ((tables[b, pos // BS] * 2 + kind) * kv_heads + h) * BS + pos % BS


def shuffled_tables(lens: list[int], width: int, rng: np.random.Generator) -> np.ndarray:
    """Distinct blocks in random order per sequence; entries past a sequence's blocks are 0."""
    free = rng.permutation(np.arange(1, NUM_BLOCKS))
    tables = np.zeros((len(lens), width), np.int32)
    for b, n in enumerate(lens):
        need = -(-n // BS)
        tables[b, :need], free = free[:need], free[need:]
    return tables


def reference(q, cache, tables, lens, kv_heads) -> np.ndarray:
    """float64 softmax(q . K) V over each sequence's first lens[b] positions; q [B, kv_heads, G, D]."""
    c64 = cache.astype(np.float64)
    out = np.zeros(q.shape)
    for b, n in enumerate(lens):
        for h in range(kv_heads):
            scores = q[b, h].astype(np.float64) @ c64[rows(tables, b, n, 0, h, kv_heads)].T
            p = np.exp(scores - scores.max(axis=1, keepdims=True))
            out[b, h] = (p / p.sum(axis=1, keepdims=True)) @ c64[rows(tables, b, n, 1, h, kv_heads)]
    return out


def random_cache(kv_heads: int, head_dim: int, rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal((NUM_BLOCKS * 2 * kv_heads * BS, head_dim)).astype(np.float32)


def random_qkv(b: int, kv_heads: int, group: int, head_dim: int, rng: np.random.Generator):
    """A fused projection output [B, (heads + 2 * kv_heads) * D] and its q, k, v parts."""
    q = rng.standard_normal((b, kv_heads * group, head_dim)).astype(np.float32)
    k = (3 * rng.standard_normal((b, kv_heads, head_dim))).astype(np.float32)
    v = rng.standard_normal((b, kv_heads, head_dim)).astype(np.float32)
    return np.concatenate([q.reshape(b, -1), k.reshape(b, -1), v.reshape(b, -1)], 1), q, k, v


@pytest.mark.parametrize("kv_heads,group,head_dim", [(2, 4, 32), (4, 1, 64), (1, 3, 20), (8, 1, 64)],
                         ids=["gqa", "mha", "head_dim_20", "heads_split"])
def test_kernel_rotates_writes_the_new_rows_in_place_then_matches_float64(kv_heads, group, head_dim):
    rng = np.random.default_rng(kv_heads)
    lens = [1, 17, 40, 33, 16, 2] if kv_heads != 8 else [45, 3]  # ragged, 1, block edges; B < 8 splits heads
    tables = shuffled_tables(lens, 32, rng)                      # M * BS = 512: far beyond every context
    cache = random_cache(kv_heads, head_dim, rng)
    b = len(lens)
    qkv, q, k, v = random_qkv(b, kv_heads, group, head_dim, rng)
    cos, sin = rope(head_dim)
    pos = np.array(lens) - 1

    net = Attend(cache, kv_heads * group, kv_heads)
    out = net(Tensor(qkv), Tensor(cos.astype(np.float32)), Tensor(sin.astype(np.float32)), Tensor(tables),
              Tensor(np.array(lens, np.int32))).asnumpy()

    q_rot = (rotate(q, cos, sin, pos) / np.sqrt(head_dim)).reshape(b, kv_heads, group, head_dim)
    k_rot = rotate(k, cos, sin, pos)
    stale = reference(q_rot, cache, tables, lens, kv_heads)
    written = net.kv_cache.asnumpy()
    for i, n in enumerate(lens):
        for h in range(kv_heads):
            k_row, v_row = rows(tables, i, n, 0, h, kv_heads)[-1], rows(tables, i, n, 1, h, kv_heads)[-1]
            assert np.abs(written[k_row] - k_rot[i, h]).max() < 1e-5   # K rotated at its position
            cache[k_row], cache[v_row] = written[k_row], v[i, h]
    np.testing.assert_array_equal(written, cache)  # written in place, nothing else touched
    expected = reference(q_rot, cache, tables, lens, kv_heads)
    assert np.abs(out - expected).max() < 2e-6
    assert np.abs(out - stale).max() > 1e-2  # so the kernel did read the rows it wrote


def test_a_sequence_reads_only_its_own_context():
    """The output of a sequence is bit-identical whatever the bucket width, the blocks past its
    context (even invalid ones) and the other sequences of the batch."""
    rng = np.random.default_rng(7)
    kv_heads, group = 2, 4
    cache = random_cache(kv_heads, HEAD_DIM, rng)
    qkv = random_qkv(3, kv_heads, group, HEAD_DIM, rng)[0]
    cos, sin = (Tensor(t.astype(np.float32)) for t in rope(HEAD_DIM))
    lens = np.array([21, 5, 1], np.int32)
    tables = shuffled_tables([21, 5, 1], 2, rng)                               # M * BS = 32

    def run(b: slice, t: np.ndarray) -> np.ndarray:
        return Attend(cache, kv_heads * group, kv_heads)(Tensor(qkv[b]), cos, sin, Tensor(t), Tensor(lens[b])).asnumpy()

    batch = run(slice(0, 3), tables)
    wide = np.full((3, 32), 10**6, np.int32)                                   # invalid past the context
    wide[:, :2] = tables
    wide[0, 2:] = 10**6
    for b in range(3):
        np.testing.assert_array_equal(batch[b], run(slice(b, b + 1), wide[b:b + 1])[0])


def test_bad_input_is_a_clear_error():
    qkv = Tensor(np.zeros((1, (2 + 4) * 8), np.float32))       # 2 heads, 2 KV heads, head_dim 8
    table = Tensor(np.zeros((40, 8), np.float32))
    cache = Tensor(np.zeros((3 * 2 * 2 * BS, 8), np.float32))  # 3 blocks
    tables = Tensor(np.array([[1, 2]], np.int32))
    lens = Tensor(np.array([2], np.int32))
    attend = decode_attention_op(BS, 2, 2)
    with pytest.raises(ValueError, match="input 'block_tables': must be Int32"):
        attend(qkv, cache, table, table, Tensor(np.array([[1, 2]], np.int64)), lens)
    with pytest.raises(ValueError, match=r"input 'kv_cache': must be \[num_blocks \* 2 \* kv_heads \* block_size"):
        attend(qkv, Tensor(np.zeros((8, 4), np.float32)), table, table, tables, lens)
    with pytest.raises(ValueError, match=r"input 'qkv': must be \[B, \(heads \+ 2 \* kv_heads\) \* head_dim\] = \[B, 48\]"):
        attend(Tensor(np.zeros((1, 40), np.float32)), cache, table, table, tables, lens)
    with pytest.raises(ValueError, match="input 'rope_sin': must have rope_cos's shape"):
        attend(qkv, cache, table, Tensor(np.zeros((40, 6), np.float32)), tables, lens)
    with pytest.raises(ValueError, match="input 'context_lens': must be"):
        attend(qkv, cache, table, table, tables, Tensor(np.array([2, 2], np.int32)))
    with pytest.raises(ValueError, match=r"block_size must be one of \[8, 16, 32, 64, 128\], got 12"):
        decode_attention_op(12, 2, 2)
    with pytest.raises(ValueError, match=r"heads \(3\) must be a multiple of kv_heads \(2\)"):
        decode_attention_op(BS, 3, 2)
    # a block outside the cache within the context (code 4), a context of 0, past the table or past
    # the rotary tables (6): the kernel refuses instead of reading or writing out of bounds
    with pytest.raises(RuntimeError, match="is 4"):
        attend(qkv, cache, table, table, Tensor(np.array([[3, 0]], np.int32)), lens)
    for bad in (0, 2 * BS + 1):
        with pytest.raises(RuntimeError, match="is 6"):
            attend(qkv, cache, table, table, tables, Tensor(np.array([bad], np.int32)))
    short = Tensor(np.zeros((20, 8), np.float32))              # positions 0..19 only
    with pytest.raises(RuntimeError, match="is 6"):
        attend(qkv, cache, short, short, tables, Tensor(np.array([21], np.int32)))


def test_library_is_cached_by_source_and_headers_and_rebuilt_when_they_change(tmp_path):
    first = build_library(SOURCE, tmp_path)
    again = build_library(SOURCE, tmp_path)
    assert again.path == first.path and again.build_seconds == 0.0 and first.build_seconds > 0
    edited = tmp_path / "src" / SOURCE.name
    edited.parent.mkdir()
    edited.write_text(SOURCE.read_text() + "\n// edited\n")
    assert build_library(edited, tmp_path).path != first.path
    assert len(list(tmp_path.glob("*.so"))) == 2
    # the same source bytes beside an edited header: that header is what compiles, so a new key
    copy = tmp_path / "copy" / SOURCE.name
    copy.parent.mkdir()
    copy.write_text(SOURCE.read_text())
    for header in SOURCE.parent.glob("*.h"):
        edit = "\n// edited\n" if header.name == "attention.h" else ""
        (copy.parent / header.name).write_text(header.read_text() + edit)
    assert build_library(copy, tmp_path).path not in (first.path, build_library(edited, tmp_path).path)


def test_without_a_compiler_the_model_falls_back_to_basic_ops(tmp_path):
    probe = textwrap.dedent("""
        import warnings
        from msllama.config import LlamaConfig, RuntimeConfig
        from msllama.model import LlamaModel
        from msllama.weights import random_weights
        cfg = LlamaConfig(vocab_size=64, hidden_size=32, num_layers=1, num_heads=4, intermediate_size=64,
                          seq_length=32)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rt = RuntimeConfig(num_blocks=4, attention_kernel="cpu_paged", small_matmul_rows=8, fused_pointwise_rows=8)
            model = LlamaModel(cfg, rt, random_weights(cfg))
        print(model.rt.attention_kernel, model.layers[0].paged_kernel, model.rt.small_matmul_rows, model.lm_head.small,
              model.rt.fused_pointwise_rows, model.layers[0].swiglu, model.rt.fused_layer_rows, model.layers[0].layer_op)
        for key in ("attention_kernel", "small_matmul_rows", "fused_pointwise_rows", "fused_layer_rows"):
            print([str(w.message) for w in caught if f"'{key}'" in str(w.message)])
    """)
    env = {**os.environ, "CXX": "no-such-compiler", "MSLLAMA_KERNEL_CACHE": str(tmp_path / "empty")}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120,
                         check=True).stdout.splitlines()
    assert out[0] == "basic None 0 None 0 None 0 None"
    assert "'cpu_paged' is unavailable, using 'basic'" in out[1]
    assert "C++ compiler 'no-such-compiler' not found on PATH" in out[1]
    assert "'small_matmul_rows': the kernel is unavailable, using 0 (MatMul)" in out[2]
    assert "'fused_pointwise_rows': the kernels are unavailable, using 0 (basic ops)" in out[3]
    assert "'fused_layer_rows': the kernel is unavailable, using 0 (one op per piece)" in out[4]


# ---- the whole model: kernel graphs against basic-op graphs on the same weights and cache ----

def test_model_decode_with_kernel_equals_basic_attention():
    cfg = LlamaConfig(vocab_size=512, hidden_size=128, num_layers=2, num_heads=8, n_kv_heads=2,
                      intermediate_size=352, seq_length=512)
    ladder = Ladder(decode_batches=(4,), decode_blocks=(2, 32), prefill_tokens=(128,),
                    prefill_context_factors=(1,), prefill_min_rows=4)
    runner = ModelRunner(cfg, RuntimeConfig(num_blocks=NUM_BLOCKS, block_size=BS, attention_kernel="cpu_paged"),
                         random_weights(cfg, seed=3), ladder)
    assert runner.decode_step.use_kernel
    basic = DecodeStep(runner.model, use_kernel=False)
    rng = np.random.default_rng(3)
    lens = np.array([30, 3, 17, 25], np.int32)
    tables = shuffled_tables([n + 1 for n in lens], 2, rng)
    prompts = rng.integers(3, cfg.vocab_size, int(lens.sum()), dtype=np.int32)
    greedy = SamplingBatch.greedy(4)
    last = (np.cumsum(lens) - 1).astype(np.int32)
    runner.step(StepInput(True, prompts, lens, lens, tables, last, greedy))

    def decode(blocks: int) -> np.ndarray:
        runner.ladder = dataclasses.replace(ladder, decode_blocks=(blocks,))  # the bucket L = blocks * BS
        step = StepInput(False, np.array([5, 6, 7, 8], np.int32), np.ones(4, np.int32), lens + 1, tables,
                         np.arange(4, dtype=np.int32), greedy, np.arange(4, dtype=np.int32))
        return runner.step(step).logits

    kernel = {w: decode(w) for w in (2, 32)}        # L = 32 and L = 512 buckets
    runner.decode_step = basic
    reference = decode(2)
    np.testing.assert_array_equal(kernel[2], kernel[32])
    assert np.abs(kernel[2] - reference).max() < 1e-5


def test_decode_step_refuses_the_kernel_on_a_basic_model():
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, num_layers=1, num_heads=4, intermediate_size=64, seq_length=32)
    runner = ModelRunner(cfg, RuntimeConfig(num_blocks=4, attention_kernel="basic"), random_weights(cfg),
                         Ladder(decode_batches=(1,), decode_blocks=(1,)))
    with pytest.raises(ValueError, match="needs a model built with attention_kernel 'cpu_paged'"):
        DecodeStep(runner.model, use_kernel=True)


def with_basic_decode(kv_heads: int):
    runner, ref = test_model.make_runner(kv_heads)
    runner.decode_step = DecodeStep(runner.model, use_kernel=False)
    runner.paged_prefill = None  # the masked basic-op prefill
    return runner, ref


@pytest.fixture(scope="module", params=[8, 2], ids=["mha", "gqa"])
def pair(request):
    return with_basic_decode(request.param)


@pytest.fixture(scope="module")
def gqa():
    return with_basic_decode(2)


def test_attention_kernel_config():
    assert RuntimeConfig().attention_kernel == "cpu_paged"
    assert RuntimeConfig(device_target="Ascend", compute_dtype="float16").attention_kernel == "basic"
    assert RuntimeConfig(attention_kernel="basic").attention_kernel == "basic"
    with pytest.raises(ConfigError, match="'attention_kernel': must be basic or cpu_paged on CPU"):
        RuntimeConfig(attention_kernel="ascend")
    with pytest.raises(ConfigError, match="'attention_kernel': cpu_paged is a CPU kernel"):
        RuntimeConfig(device_target="Ascend", compute_dtype="float16", attention_kernel="cpu_paged")
    with pytest.raises(ConfigError, match="'attention_kernel': must be one of"):
        RuntimeConfig(attention_kernel="flash")
    # parsed, but never silently built as something else
    ascend = RuntimeConfig(device_target="Ascend", compute_dtype="float16", attention_kernel="ascend")
    cfg = LlamaConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, vocab_size=64)
    with pytest.raises(ConfigError, match="'attention_kernel': 'ascend' .* not implemented"):
        LlamaModel(cfg, ascend, random_weights(cfg))
