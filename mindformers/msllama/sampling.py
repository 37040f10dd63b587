"""Batched next-token selection from logits (numpy, on the model side after the LM head).

Rows of one batch may mix greedy and sampled requests. A sampled row draws from
`np.random.default_rng([seed, position])`, so its token depends only on its logits, parameters,
seed and position: never on which other rows share the batch or in which order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class SamplingParams:
    """One request's sampling settings (the neutral value of each turns it off)."""
    temperature: float = 0.0        # 0: greedy
    top_k: int = 0                  # 0: off
    top_p: float = 1.0              # 1.0: off
    repetition_penalty: float = 1.0  # 1.0: off
    seed: int = 0


@dataclass
class SamplingBatch:
    """Per-row sampling inputs for S rows; row r's previous tokens (for the repetition penalty)
    are `history_ids[history_offsets[r]:history_offsets[r + 1]]`."""
    temperature: np.ndarray         # f32[S]
    top_k: np.ndarray               # i32[S]
    top_p: np.ndarray               # f32[S]
    repetition_penalty: np.ndarray  # f32[S]
    seed: np.ndarray                # i64[S]
    position: np.ndarray            # i32[S]: position of the token being generated
    history_ids: np.ndarray         # i32[N]
    history_offsets: np.ndarray     # i32[S + 1]

    def __post_init__(self) -> None:
        for name, dtype in (("temperature", np.float32), ("top_k", np.int32), ("top_p", np.float32),
                            ("repetition_penalty", np.float32), ("seed", np.int64),
                            ("position", np.int32), ("history_ids", np.int32),
                            ("history_offsets", np.int32)):
            value = np.asarray(getattr(self, name))
            if value.ndim != 1:
                raise ValueError(f"{name}: must be a 1-D array, got shape {value.shape}")
            # Integers may fill float fields; nothing else may change kind (top_k=2.5 is an error).
            if value.size and value.dtype.kind != np.dtype(dtype).kind and not (
                    value.dtype.kind in "iu" and np.dtype(dtype).kind == "f"):
                raise ValueError(f"{name}: must hold {np.dtype(dtype).name} values, got {value.dtype}")
            setattr(self, name, np.ascontiguousarray(value, dtype=dtype))
        size = self.temperature.size
        for name in ("top_k", "top_p", "repetition_penalty", "seed", "position"):
            if getattr(self, name).size != size:
                raise ValueError(f"{name}: has {getattr(self, name).size} rows, temperature has {size}")
        offsets = self.history_offsets
        if (offsets.size != size + 1 or offsets[0] != 0 or offsets[-1] != self.history_ids.size
                or np.any(np.diff(offsets) < 0)):
            raise ValueError(f"history_offsets: must be {size + 1} non-decreasing offsets from 0 to "
                             f"len(history_ids) = {self.history_ids.size}")
        _check("temperature", self.temperature >= 0, self.temperature, "must be >= 0 (0 = greedy)")
        _check("top_k", self.top_k >= 0, self.top_k, "must be >= 0 (0 = off)")
        _check("top_p", (self.top_p > 0) & (self.top_p <= 1), self.top_p, "must be in (0, 1]")
        _check("repetition_penalty", self.repetition_penalty > 0, self.repetition_penalty, "must be > 0")
        _check("seed", self.seed >= 0, self.seed, "must be >= 0")
        _check("position", self.position >= 0, self.position, "must be >= 0")
        _check("history_ids", self.history_ids >= 0, self.history_ids, "must be >= 0")

    @property
    def size(self) -> int:
        return self.temperature.size

    @classmethod
    def from_rows(cls, params: Sequence[SamplingParams], positions: Sequence[int],
                  histories: Sequence[Sequence[int]] | None = None) -> SamplingBatch:
        if len(positions) != len(params):
            raise ValueError(f"positions: has {len(positions)} rows, params has {len(params)}")
        histories = histories if histories is not None else [()] * len(params)
        if len(histories) != len(params):
            raise ValueError(f"histories: has {len(histories)} rows, params has {len(params)}")
        # No dtypes here: __post_init__ checks the kinds (a float top_k must not be truncated).
        return cls(
            temperature=np.array([p.temperature for p in params]),
            top_k=np.array([p.top_k for p in params]),
            top_p=np.array([p.top_p for p in params]),
            repetition_penalty=np.array([p.repetition_penalty for p in params]),
            seed=np.array([p.seed for p in params]),
            position=np.array(positions),
            history_ids=np.array([t for h in histories for t in h]),
            history_offsets=np.cumsum([0, *(len(h) for h in histories)]))

    @classmethod
    def greedy(cls, size: int) -> SamplingBatch:
        return cls.from_rows([SamplingParams()] * size, [0] * size)


def sample(logits: np.ndarray, batch: SamplingBatch) -> tuple[np.ndarray, np.ndarray]:
    """Next token per row (int32 [S]) and its raw logit (float32 [S], before penalty and
    temperature: what the contest's "logprob" field holds)."""
    if logits.ndim != 2 or logits.shape[0] != batch.size:
        raise ValueError(f"logits: must have shape [{batch.size}, vocab], got {logits.shape}")
    vocab = logits.shape[1]
    if batch.history_ids.size and batch.history_ids.max() >= vocab:
        raise ValueError(f"history_ids: must be < vocab size {vocab}, got {batch.history_ids.max()}")
    rows = np.arange(batch.size)
    tokens = np.argmax(logits, axis=1).astype(np.int32)     # greedy rows without penalty
    penalised = _penalised_rows(logits, batch)
    for r, row in penalised.items():
        if batch.temperature[r] == 0:
            tokens[r] = np.argmax(row)
    for r in np.flatnonzero(batch.temperature > 0).tolist():
        tokens[r] = _draw(penalised.get(r, logits[r]), float(batch.temperature[r]), int(batch.top_k[r]),
                          float(batch.top_p[r]), np.random.default_rng([batch.seed[r], batch.position[r]]))
    return tokens, logits[rows, tokens].astype(np.float32)


def _penalised_rows(logits: np.ndarray, batch: SamplingBatch) -> dict[int, np.ndarray]:
    """Copies of the rows with a repetition penalty, penalised CTRL-style: each token seen
    before has its logit divided by the penalty when positive, multiplied when negative."""
    counts = np.diff(batch.history_offsets)
    out = {}
    for r in np.flatnonzero((batch.repetition_penalty != 1) & (counts > 0)).tolist():
        # Repeated ids need no np.unique: every copy gathers and stores the same original value.
        seen = batch.history_ids[batch.history_offsets[r]:batch.history_offsets[r + 1]]
        row = logits[r].copy()
        values = row[seen]
        penalty = batch.repetition_penalty[r]
        row[seen] = np.where(values > 0, values / penalty, values * penalty)
        out[r] = row
    return out


def _draw(row: np.ndarray, temperature: float, top_k: int, top_p: float, rng: np.random.Generator) -> int:
    """Temperature, then top-k, then top-p, then one inverse-CDF draw."""
    candidates = _top_k(row, top_k) if 0 < top_k < row.size else None
    z = (row if candidates is None else row[candidates]).astype(np.float64) / temperature
    weights = np.exp(z - z.max())
    if top_p < 1.0:
        keep = _nucleus(weights, top_p)
        weights = weights[keep]
        candidates = keep if candidates is None else candidates[keep]
    cdf = np.cumsum(weights)
    i = min(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")), cdf.size - 1)
    return i if candidates is None else int(candidates[i])


def _top_k(row: np.ndarray, k: int) -> np.ndarray:
    return _keep_largest(row, k, np.partition(row, row.size - k)[row.size - k])


def _nucleus(weights: np.ndarray, top_p: float) -> np.ndarray:
    """The smallest set of largest weights whose share of the total is >= top_p (at least one)."""
    descending = np.sort(weights)[::-1]     # a value sort is several times faster than argsort
    cumulative = np.cumsum(descending)
    n = min(int(np.searchsorted(cumulative, top_p * cumulative[-1], side="left")) + 1, weights.size)
    return _keep_largest(weights, n, descending[n - 1])


def _keep_largest(values: np.ndarray, n: int, threshold: float) -> np.ndarray:
    """Indices (ascending) of the n largest values, `threshold` being the n-th largest; of values
    tied at the threshold the lowest indices are kept, so n = 1 picks the argmax."""
    keep = values > threshold
    keep[np.flatnonzero(values == threshold)[:n - np.count_nonzero(keep)]] = True
    return np.flatnonzero(keep)


def _check(name: str, ok: np.ndarray, values: np.ndarray, rule: str) -> None:
    bad = np.flatnonzero(~ok)
    if bad.size:
        raise ValueError(f"{name}[{bad[0]}] = {values[bad[0]]}: {rule}")
