from __future__ import annotations

import numpy as np
import pytest

from msllama.sampling import SamplingBatch, SamplingParams, sample

DRAWS = 20000


def _reference(logits: np.ndarray, temperature: float, top_k: int = 0, top_p: float = 1.0) -> np.ndarray:
    """Expected token probabilities, written independently of the implementation: temperature,
    then top-k, then the smallest nucleus of mass >= top_p."""
    z = logits.astype(np.float64) / temperature
    probs = np.exp(z - z.max())
    probs /= probs.sum()
    order = np.argsort(-probs, kind="stable")
    keep = order[:top_k] if top_k else order
    kept = probs[keep] / probs[keep].sum()
    n = int(np.argmax(np.cumsum(kept) >= top_p - 1e-12)) + 1
    out = np.zeros_like(probs)
    out[keep[:n]] = kept[:n] / kept[:n].sum()
    return out


def _frequencies(logits: np.ndarray, params: SamplingParams, history: list[int] = ()) -> np.ndarray:
    """Token frequencies over DRAWS positions (one batch: the row repeated at each position)."""
    batch = SamplingBatch.from_rows([params] * DRAWS, list(range(DRAWS)), [history] * DRAWS)
    tokens, _ = sample(np.tile(logits, (DRAWS, 1)), batch)
    return np.bincount(tokens, minlength=logits.size) / DRAWS


def _assert_distribution(freq: np.ndarray, expected: np.ndarray) -> None:
    # 5 standard deviations per token: a false alarm is ~1e-6 likely, a wrong distribution
    # (e.g. a temperature or nucleus off by a little) is far outside.
    tolerance = 5 * np.sqrt(expected * (1 - expected) / DRAWS)
    assert np.all(freq[expected == 0] == 0)
    assert np.all(np.abs(freq - expected) <= tolerance), (freq, expected)


LOGITS = np.array([2.0, 1.5, 1.2, 0.3, 0.0, -0.5, -1.0, -3.0], dtype=np.float32)


def test_greedy_is_argmax() -> None:
    logits = np.random.default_rng(0).normal(size=(16, 32000)).astype(np.float32)
    tokens, chosen = sample(logits, SamplingBatch.greedy(16))
    assert tokens.dtype == np.int32 and chosen.dtype == np.float32
    np.testing.assert_array_equal(tokens, logits.argmax(axis=1))
    np.testing.assert_array_equal(chosen, logits.max(axis=1))


def test_top_k_1_is_greedy_even_with_ties() -> None:
    logits = np.random.default_rng(1).normal(size=(32, 1000)).astype(np.float32)
    logits[::2, [7, 300, 999]] = 10.0  # tied maxima on even rows
    params = [SamplingParams(temperature=1.5, top_k=1, seed=s) for s in range(32)]
    tokens, _ = sample(logits, SamplingBatch.from_rows(params, list(range(32))))
    np.testing.assert_array_equal(tokens, logits.argmax(axis=1))
    assert set(tokens[::2]) == {7}


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_temperature_distribution(temperature: float) -> None:
    freq = _frequencies(LOGITS, SamplingParams(temperature=temperature, seed=3))
    _assert_distribution(freq, _reference(LOGITS, temperature))


@pytest.mark.parametrize("top_k", [2, 3, 5])
def test_top_k_distribution(top_k: int) -> None:
    freq = _frequencies(LOGITS, SamplingParams(temperature=1.0, top_k=top_k, seed=4))
    _assert_distribution(freq, _reference(LOGITS, 1.0, top_k=top_k))
    assert np.count_nonzero(freq) == top_k


@pytest.mark.parametrize("top_p", [0.3, 0.6, 0.9])
def test_top_p_distribution(top_p: float) -> None:
    freq = _frequencies(LOGITS, SamplingParams(temperature=0.8, top_p=top_p, seed=5))
    _assert_distribution(freq, _reference(LOGITS, 0.8, top_p=top_p))


def test_top_k_and_top_p_after_temperature() -> None:
    params = SamplingParams(temperature=2.0, top_k=5, top_p=0.8, seed=6)
    expected = _reference(LOGITS, 2.0, top_k=5, top_p=0.8)
    assert np.count_nonzero(expected) == 4   # at temperature 1 the nucleus would be 3 tokens
    _assert_distribution(_frequencies(LOGITS, params), expected)


@pytest.mark.parametrize("scale", [0.05, 3.0])
def test_top_p_never_leaves_the_nucleus_large_vocab(scale: float) -> None:
    # A flat and a peaked distribution over 32000 tokens: the nucleus spans thousands of tokens or
    # a handful.
    rng = np.random.default_rng(7)
    logits = (rng.normal(size=32000) * scale).astype(np.float32)
    nucleus = np.flatnonzero(_reference(logits, 1.0, top_p=0.9))
    params = [SamplingParams(temperature=1.0, top_p=0.9, seed=8)] * 500
    tokens, _ = sample(np.tile(logits, (500, 1)), SamplingBatch.from_rows(params, list(range(500))))
    assert np.isin(tokens, nucleus).all()
    assert len(set(tokens.tolist())) > (400 if scale < 1 else 1)


def test_repetition_penalty_greedy() -> None:
    logits = np.array([[2.0, 1.2, -0.5, -0.8], [2.0, 1.2, -0.5, -0.8], [-1.0, -2.0, -0.5, -0.6]],
                      dtype=np.float32)
    params = [SamplingParams(repetition_penalty=1.5)] * 3
    # Row 0: token 0 seen three times, penalised once: 2.0 / 1.5 = 1.33 > 1.2 stays the argmax.
    # Row 1: tokens 0 and 1 seen: 1.33 vs 0.8. Row 2: negative logits are multiplied: -0.5 -> -0.75.
    batch = SamplingBatch.from_rows(params, [5, 5, 5], [[0, 0, 0], [0, 1], [2]])
    tokens, chosen = sample(logits, batch)
    np.testing.assert_array_equal(tokens, [0, 0, 3])
    np.testing.assert_array_equal(chosen, logits[[0, 1, 2], [0, 0, 3]])   # raw, before the penalty
    heavy = SamplingBatch.from_rows([SamplingParams(repetition_penalty=2.0)], [5], [[0]])
    assert sample(logits[:1], heavy)[0][0] == 1
    # A penalty below 1 rewards repetition.
    reward = SamplingBatch.from_rows([SamplingParams(repetition_penalty=0.5)], [5], [[2]])
    assert sample(logits[2:], reward)[0][0] == 2


def test_repetition_penalty_sampled() -> None:
    logits = np.ones(4, dtype=np.float32)
    freq = _frequencies(logits, SamplingParams(temperature=1.0, repetition_penalty=2.0, seed=9), [0, 1, 1])
    _assert_distribution(freq, _reference(np.array([0.5, 0.5, 1.0, 1.0]), 1.0))


def test_draw_depends_only_on_seed_and_position() -> None:
    rng = np.random.default_rng(10)
    rows = 24
    logits = rng.normal(size=(rows, 500)).astype(np.float32)
    params = [SamplingParams(temperature=float(rng.uniform(0.5, 1.5)) * (i % 4 != 0),
                             top_k=int(rng.integers(0, 50)), top_p=float(rng.uniform(0.5, 1.0)),
                             repetition_penalty=float(rng.uniform(1.0, 1.3)), seed=int(rng.integers(1 << 40)))
              for i in range(rows)]
    positions = rng.integers(0, 4096, size=rows).tolist()
    histories = [rng.integers(0, 500, size=int(rng.integers(0, 20))).tolist() for _ in range(rows)]
    alone = [sample(logits[i:i + 1], SamplingBatch.from_rows([params[i]], [positions[i]], [histories[i]]))[0][0]
             for i in range(rows)]
    order = rng.permutation(rows)
    batch = SamplingBatch.from_rows([params[i] for i in order], [positions[i] for i in order],
                                    [histories[i] for i in order])
    shuffled, _ = sample(logits[order], batch)
    np.testing.assert_array_equal(shuffled, np.array(alone)[order])
    # Another position gives another draw for at least some sampled rows.
    moved = SamplingBatch.from_rows(params, [p + 1 for p in positions], histories)
    assert (sample(logits, moved)[0] != np.array(alone)).any()


def test_batch_arrays_and_validation() -> None:
    batch = SamplingBatch.from_rows([SamplingParams(), SamplingParams(temperature=1, top_k=3)], [3, 9],
                                    [[1, 2], []])
    assert batch.size == 2 and batch.top_k.dtype == np.int32 and batch.seed.dtype == np.int64
    np.testing.assert_array_equal(batch.history_offsets, [0, 2, 2])
    good = dict(temperature=[0.0], top_k=[0], top_p=[1.0], repetition_penalty=[1.0], seed=[0],
                position=[0], history_ids=[], history_offsets=[0, 0])
    SamplingBatch(**good)
    for field, value, message in [
            ("temperature", [-0.1], r"temperature\[0\] = -0.1.*>= 0"),
            ("temperature", [float("nan")], r"temperature\[0\]"),
            ("top_k", [-1], r"top_k\[0\] = -1: must be >= 0"),
            ("top_k", [2.5], r"top_k: must hold int32"),
            ("top_p", [0.0], r"top_p\[0\] = 0.0: must be in \(0, 1\]"),
            ("top_p", [1.5], r"top_p\[0\]"),
            ("repetition_penalty", [0.0], r"repetition_penalty\[0\] = 0.0: must be > 0"),
            ("seed", [-1], r"seed\[0\] = -1"),
            ("position", [0, 1], r"position: has 2 rows"),
            ("history_offsets", [0, 1], r"history_offsets: must be 2 non-decreasing offsets")]:
        with pytest.raises(ValueError, match=message):
            SamplingBatch(**{**good, field: value})
    with pytest.raises(ValueError, match=r"logits: must have shape \[1, vocab\]"):
        sample(np.zeros((2, 8), np.float32), SamplingBatch(**good))
    with pytest.raises(ValueError, match=r"history_ids: must be < vocab size 8"):
        sample(np.zeros((1, 8), np.float32), SamplingBatch(**{**good, "history_ids": [8], "history_offsets": [0, 1]}))
    with pytest.raises(ValueError, match=r"top_k: must hold int32 values, got float"):
        SamplingBatch.from_rows([SamplingParams(temperature=1.0, top_k=2.5)], [0])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positions: has 1 rows"):
        SamplingBatch.from_rows([SamplingParams()] * 2, [0])
