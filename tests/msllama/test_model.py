"""The paged MindSpore model against the float64 numpy reference, and batch invariance."""
from __future__ import annotations

import numpy as np
import pytest

from msllama.config import LlamaConfig, RuntimeConfig
from msllama.reference import ReferenceModel
from msllama.runner import Ladder, ModelRunner, ShapeError, StepInput
from msllama.sampling import SamplingBatch
from msllama.weights import random_weights

BS = 16
LADDER = Ladder(decode_batches=(1, 8), decode_blocks=(8, 16), prefill_tokens=(32, 128),
                prefill_context_factors=(1, 2), prefill_min_rows=8)


def make_runner(kv_heads: int, num_blocks: int = 96, tied: bool = False,
                **runtime) -> tuple[ModelRunner, ReferenceModel]:
    """`runtime`: RuntimeConfig fields other than the defaults (which the tests here run)."""
    cfg = LlamaConfig(vocab_size=32000, hidden_size=128, num_layers=2, num_heads=8, n_kv_heads=kv_heads,
                      intermediate_size=352, seq_length=256, tie_word_embeddings=tied)
    weights = random_weights(cfg, seed=kv_heads)
    runner = ModelRunner(cfg, RuntimeConfig(num_blocks=num_blocks, block_size=BS, **runtime), weights, LADDER)
    runner.warmup()
    return runner, ReferenceModel(cfg, weights)


@pytest.fixture(scope="module", params=[(8, False), (2, False), (2, True)], ids=["mha", "gqa", "gqa-tied-head"])
def pair(request):
    kv_heads, tied = request.param
    return make_runner(kv_heads, tied=tied)


@pytest.fixture(scope="module")
def gqa():
    return make_runner(2)


def step(runner: ModelRunner, tokens: list[list[int]], starts: list[int], tables: np.ndarray,
         prefill: bool) -> np.ndarray:
    """Run one step feeding `tokens[i]` after `starts[i]` cached tokens; logits of each last token."""
    lens = np.array([len(t) for t in tokens], np.int32)
    ctx = np.array(starts, np.int32) + lens
    last = (np.cumsum(lens) - 1).astype(np.int32)
    s = StepInput(prefill, np.concatenate(tokens).astype(np.int32), lens, ctx, tables, last,
                  SamplingBatch.greedy(len(tokens)), last)
    out = runner.step(s)
    assert out.logits.shape == (len(tokens), runner.cfg.vocab_size)
    np.testing.assert_array_equal(out.next_tokens, out.logits.argmax(axis=1))
    return out.logits


def tables_for(widths: list[int], first: int = 1) -> np.ndarray:
    t = np.zeros((len(widths), max(widths)), np.int32)
    for r, w in enumerate(widths):
        t[r, :w] = np.arange(first, first + w)
        first += w
    return t


def test_paged_model_matches_reference_over_prefill_and_50_decode_steps(pair):
    runner, ref = pair
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, 32000, size=n).tolist() for n in (5, 17, 33, 2, 20, 9)]
    tables = tables_for([-(-(len(p) + 51) // BS) for p in prompts])
    caches = [ref.new_cache() for _ in prompts]
    logits = step(runner, prompts, [0] * len(prompts), tables, prefill=True)
    worst = 0.0
    ctx = [len(p) for p in prompts]
    for _ in range(51):
        expected = np.stack([ref.forward(t, c)[-1] for t, c in zip(prompts, caches)])
        worst = max(worst, float(np.abs(logits - expected).max()))
        assert (logits.argmax(1) == expected.argmax(1)).all()
        prompts = [[int(t)] for t in expected.argmax(1)]
        logits = step(runner, prompts, ctx, tables, prefill=False)
        ctx = [c + 1 for c in ctx]
    assert worst < 1e-4, worst


def test_one_sequence_is_batch_invariant(gqa):
    runner, _ = gqa
    rng = np.random.default_rng(1)
    target = rng.integers(3, 32000, size=21).tolist()
    others = [rng.integers(3, 32000, size=n).tolist() for n in (3, 12, 7, 15, 4, 9, 6)]

    # alone, in the smallest buckets
    alone = step(runner, [target], [0], tables_for([2]), prefill=True)[0]
    alone_dec = step(runner, [[5]], [21], tables_for([2]), prefill=False)[0]

    # inside a batch of 8 (a bigger prefill bucket, a decode batch bucket of 8), other blocks
    widths = [2] * 8
    tables = tables_for(widths, first=10)
    batch = others[:3] + [target] + others[3:]
    in_batch = step(runner, batch, [0] * 8, tables, prefill=True)[3]
    in_batch_dec = step(runner, [[7]] * 3 + [[5]] + [[7]] * 4, [len(b) for b in batch], tables, prefill=False)[3]

    # after other sequences were freed: their blocks reused in another order, longer context bucket
    reused = tables_for([2], first=10)[:, ::-1].copy()
    again = step(runner, [target], [0], reused, prefill=True)[0]
    wide = np.zeros((1, 16), np.int32)
    wide[0, :2] = reused[0]
    again_dec = step(runner, [[5]], [21], wide, prefill=False)[0]

    for x in (in_batch, again):
        assert np.abs(x - alone).max() < 1e-5
    for x in (in_batch_dec, again_dec):
        assert np.abs(x - alone_dec).max() < 1e-5


def test_chunked_prefill_and_cached_prefix_match_one_prefill(gqa):
    runner, ref = gqa
    rng = np.random.default_rng(2)
    prompt = rng.integers(3, 32000, size=70).tolist()
    expected = ref.forward(prompt)[-1]
    tables = tables_for([5], first=40)
    step(runner, [prompt[:32]], [0], tables, prefill=True)        # first chunk: 2 full blocks
    chunked = step(runner, [prompt[32:]], [32], tables, prefill=True)[0]
    assert np.abs(chunked - expected).max() < 1e-4
    # a second sequence sharing the two cached blocks computes only its own tail
    other = tables.copy()
    other[0, 2:] = [60, 61, 62]
    tail = step(runner, [prompt[32:]], [32], other, prefill=True)[0]
    assert np.abs(tail - chunked).max() < 1e-5


def test_step_that_fits_no_bucket_is_a_clear_error(gqa):
    runner, _ = gqa
    with pytest.raises(ShapeError, match="fits no bucket"):
        step(runner, [[1] * 200], [0], tables_for([13]), prefill=True)


CACHE_PROBE = """
import sys, numpy as np
from msllama.config import LlamaConfig, RuntimeConfig
from msllama.reference import ReferenceModel
from msllama.runner import Ladder, ModelRunner, StepInput
from msllama.sampling import SamplingBatch
from msllama.weights import random_weights
cfg = LlamaConfig(hidden_size=64, num_layers=1, num_heads=4, n_kv_heads=2, intermediate_size=160, seq_length=64)
w = random_weights(cfg, seed=int(sys.argv[2]))
ladder = Ladder(decode_batches=(1,), decode_blocks=(2,), prefill_tokens=(32,), prefill_context_factors=(1,))
r = ModelRunner(cfg, RuntimeConfig(num_blocks=8, compile_cache=sys.argv[1]), w, ladder)
r.warmup()
p = list(range(5, 25))
one = lambda a: np.array(a, np.int32)
o = r.step(StepInput(True, one(p), one([20]), one([20]), one([[1, 2]]), one([19]), SamplingBatch.greedy(1), one([19])))
print(float(np.abs(o.logits[0] - ReferenceModel(cfg, w).forward(p)[-1]).max()))
"""


def test_compile_cache_reuses_graphs_but_never_weights(tmp_path):
    import subprocess
    import sys
    script = tmp_path / "probe.py"           # MindSpore's cache hashes the entry script: no `-c`
    script.write_text(CACHE_PROBE)
    cache = tmp_path / "cache"
    diffs = []
    for seed in (1, 2):   # the second process loads graphs compiled with the first one's weights
        out = subprocess.run([sys.executable, str(script), str(cache), str(seed)],
                             capture_output=True, text=True, timeout=300, check=True).stdout
        diffs.append(float(out.strip().splitlines()[-1]))
    assert len(list(cache.iterdir())) == 1              # one folder, keyed by config + ladder + code
    assert max(diffs) < 1e-4, diffs


def test_a_mixed_step_of_decode_and_prompt_tokens_matches_the_reference(gqa):
    """One prefill-kind step carrying a decoding sequence's next token and a new prompt (what the
    scheduler's mixed steps send) gives both rows as the float64 model does."""
    runner, ref = gqa
    rng = np.random.default_rng(3)
    a = rng.integers(3, 32000, size=12).tolist()
    b = rng.integers(3, 32000, size=9).tolist()
    tables = tables_for([2, 1], first=70)
    first = step(runner, [a], [0], tables[:1], prefill=True)[0]
    nxt = int(first.argmax())
    mixed = step(runner, [[nxt], b], [12, 0], tables, prefill=True)
    assert np.abs(mixed[0] - ref.forward(a + [nxt])[-1]).max() < 1e-4
    assert np.abs(mixed[1] - ref.forward(b)[-1]).max() < 1e-4
