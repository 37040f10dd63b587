"""Model runner: turns one scheduled step into bucketed graph inputs, runs it, samples.

The scheduler describes a step by sequences (`StepInput`): the new tokens of each, how many tokens
each has in the cache after the step, and its block table. Positions, slot mapping, key indices
and masks are derived here with numpy, then padded to the smallest compiled shape of the `Ladder`.
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .config import LlamaConfig, PredictConfig, RuntimeConfig
from .kernels import graph_fingerprint, resolve_kernels
from .sampling import SamplingBatch, sample


@dataclass(frozen=True)
class Ladder:
    """Static shapes compiled at warm-up. Every step is padded up to one of them."""
    decode_batches: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    decode_blocks: tuple[int, ...] = (8, 16, 32, 64)        # max blocks per sequence in a decode step
    prefill_tokens: tuple[int, ...] = (32, 64, 128, 256, 512)
    prefill_context_factors: tuple[int, ...] = (1, 2, 4)     # context keys C = T * factor
    prefill_rows_per_token: float = 1 / 16                   # logits rows S = T * this (>= min)
    prefill_min_rows: int = 4
    # Prefill graphs read each token's context through its block table (the cpu_paged kernel):
    # the context-key bucket C does not apply, so a step may hold any contexts.
    paged_prefill: bool = False
    # > 0: prefill steps may also carry the decode batch (mixed steps, needs paged_prefill); each
    # prefill bucket T then has a second graph with min(T, mixed_rows) logits rows.
    mixed_rows: int = 0

    def __post_init__(self) -> None:
        for name in ("decode_batches", "decode_blocks", "prefill_tokens", "prefill_context_factors"):
            values = getattr(self, name)
            if not values or list(values) != sorted(set(values)) or values[0] <= 0:
                raise ValueError(f"ladder '{name}': must be a non-empty increasing list of positive ints")
        if self.prefill_context_factors[0] != 1:
            raise ValueError("ladder 'prefill_context_factors': must start with 1")
        if self.mixed_rows < 0 or (self.mixed_rows and not self.paged_prefill):
            raise ValueError("ladder 'mixed_rows': must be >= 0, and > 0 only with the paged prefill "
                             "(attention_kernel cpu_paged)")

    def prefill_rows(self, tokens: int) -> int:
        return min(tokens, max(self.prefill_min_rows, int(tokens * self.prefill_rows_per_token)))

    def decode_shape(self, batch: int, blocks: int) -> tuple[int, int] | None:
        b = next((x for x in self.decode_batches if x >= batch), None)
        m = next((x for x in self.decode_blocks if x >= blocks), None)
        return None if b is None or m is None else (b, m)

    def _row_buckets(self, t: int) -> list[int]:
        small = self.prefill_rows(t)
        mixed = min(t, self.mixed_rows)
        return [small, mixed] if mixed > small else [small]

    def prefill_shape(self, tokens: int, context: int, rows: int) -> tuple[int, int, int] | None:
        """Smallest (T, C, S) holding `tokens` new tokens, `context` keys and `rows` logits rows
        (with paged_prefill C is T: the graphs do not depend on the context)."""
        for t in self.prefill_tokens:
            s = next((s for s in self._row_buckets(t) if s >= rows), None)
            if t < tokens or s is None:
                continue
            if self.paged_prefill:
                return t, t, s
            for f in self.prefill_context_factors:
                if t * f >= context:
                    return t, t * f, s
        return None

    @property
    def max_prefill_rows(self) -> int:
        return max(self._row_buckets(self.max_prefill_tokens))

    @property
    def max_decode_batch(self) -> int:
        return self.decode_batches[-1]

    @property
    def max_prefill_tokens(self) -> int:
        return self.prefill_tokens[-1]

    def shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        """Every graph shape, in the fixed order warm-up compiles them."""
        out: list[tuple[str, tuple[int, ...]]] = []
        factors = (1,) if self.paged_prefill else self.prefill_context_factors
        for t in self.prefill_tokens:
            for s in self._row_buckets(t):
                for f in factors:
                    out.append(("prefill", (t, t * f, s)))
        for b in self.decode_batches:
            for m in self.decode_blocks:
                out.append(("decode", (b, m)))
        return out


@dataclass
class StepInput:
    """One engine step, described per sequence (S sequences, N new tokens in all)."""
    is_prefill: bool
    token_ids: np.ndarray       # int32 [N] new tokens, sequence after sequence
    seq_lens: np.ndarray        # int32 [S] new tokens per sequence (all 1 in a decode step)
    context_lens: np.ndarray    # int32 [S] tokens in the cache per sequence after this step
    block_tables: np.ndarray    # int32 [S, W] physical blocks, padded with 0 (the trash block)
    sample_rows: np.ndarray     # int32 [K] indices into the N tokens whose next token is sampled
    sampling: SamplingBatch     # K rows
    logits_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))  # int32 [R]


@dataclass
class StepOutput:
    next_tokens: np.ndarray     # int32 [K]
    next_logits: np.ndarray     # float32 [K] raw logit of each chosen token
    logits: np.ndarray          # float32 [R, vocab] rows asked for by `logits_rows`


class ShapeError(ValueError):
    """A step does not fit any compiled shape (a scheduler bug, never a user error)."""


class ModelRunner:
    def __init__(self, cfg: LlamaConfig, rt: RuntimeConfig, weights: dict[str, np.ndarray],
                 ladder: Ladder):
        import mindspore as ms

        from .model import DecodeStep, LlamaModel, PagedPrefillStep, PrefillStep

        rt = resolve_kernels(rt)  # before the cache key: it names the graphs really built
        ms.set_device(rt.device_target, rt.device_id)
        ms.set_context(mode=rt.mode)
        if rt.compile_cache:
            # MindSpore finds cached graphs by compile order: warm-up always compiles the whole
            # ladder in one fixed order, into a folder keyed by everything that shapes the graphs.
            ms.set_context(enable_compile_cache=True,
                           compile_cache_path=os.path.join(rt.compile_cache, compile_cache_key(cfg, rt, ladder)))
        self.cfg, self.rt, self.ladder = cfg, rt, ladder
        self._ms = ms
        self.model = LlamaModel(cfg, rt, weights)
        self.prefill_step = PrefillStep(self.model)
        self.decode_step = DecodeStep(self.model)
        # with the kernel, prefill runs through it too (None: the masked basic-op prefill)
        self.paged_prefill = PagedPrefillStep(self.model) if self.decode_step.use_kernel else None
        if ladder.paged_prefill and self.paged_prefill is None:
            raise ValueError("ladder 'paged_prefill' needs a model with attention_kernel 'cpu_paged', this one has "
                             f"'{self.model.rt.attention_kernel}'")

    # ---- input building -------------------------------------------------------------------
    def _positions(self, s: StepInput) -> np.ndarray:
        starts = s.context_lens - s.seq_lens
        offsets = np.arange(len(s.token_ids), dtype=np.int32) - np.repeat(np.cumsum(s.seq_lens) - s.seq_lens, s.seq_lens)
        return (np.repeat(starts, s.seq_lens) + offsets).astype(np.int32)

    def _slots(self, block_tables: np.ndarray, seq_index: np.ndarray, positions: np.ndarray) -> np.ndarray:
        bs = self.rt.block_size
        return (block_tables[seq_index, positions // bs] * bs + positions % bs).astype(np.int32)

    def _tensor(self, a: np.ndarray):
        return self._ms.Tensor(a)

    def _run_prefill(self, s: StepInput, out_index: np.ndarray):
        n, n_seq = len(s.token_ids), len(s.seq_lens)
        seq_of_token = np.repeat(np.arange(n_seq, dtype=np.int32), s.seq_lens)
        positions = self._positions(s)
        c = int(s.context_lens.sum())
        shape = self.ladder.prefill_shape(n, c, len(out_index))
        if shape is None:
            raise ShapeError(f"prefill of {n} tokens, {c} context keys, {len(out_index)} rows fits no bucket")
        t_pad, c_pad, rows = shape
        if self.paged_prefill is not None:
            m = self.ladder.decode_blocks[-1]
            if -(-int(s.context_lens.max()) // self.rt.block_size) > m:
                raise ShapeError(f"prefill of a sequence of {int(s.context_lens.max())} tokens needs more than "
                                 f"the largest decode bucket's {m} blocks")
            tables = np.zeros((t_pad, m), np.int32)
            w = min(m, s.block_tables.shape[1])
            tables[:n, :w] = s.block_tables[seq_of_token, :w]
            args = (_pad(s.token_ids, t_pad, 0), _pad(positions, t_pad, 0), tables,
                    _pad(out_index.astype(np.int32), rows, 0))
            return self.paged_prefill(*map(self._tensor, args))
        k_seq = np.repeat(np.arange(n_seq, dtype=np.int32), s.context_lens)
        k_pos = (np.arange(c, dtype=np.int32)
                 - np.repeat(np.cumsum(s.context_lens) - s.context_lens, s.context_lens)).astype(np.int32)
        k_index = self._slots(s.block_tables, k_seq, k_pos)
        slots = self._slots(s.block_tables, seq_of_token, positions)
        args = (_pad(s.token_ids, t_pad, 0), _pad(positions, t_pad, 0), _pad(slots, t_pad, 0),
                _pad(seq_of_token, t_pad, -1), _pad(k_index, c_pad, 0), _pad(k_seq, c_pad, -2),
                _pad(k_pos, c_pad, 0), _pad(out_index.astype(np.int32), rows, 0))
        return self.prefill_step(*map(self._tensor, args))

    def _run_decode(self, s: StepInput):
        b = len(s.token_ids)
        blocks_needed = int(-(-s.context_lens.max() // self.rt.block_size))
        shape = self.ladder.decode_shape(b, blocks_needed)
        if shape is None:
            raise ShapeError(f"decode of {b} sequences with {blocks_needed} blocks fits no bucket")
        b_pad, m_pad = shape
        positions = (s.context_lens - 1).astype(np.int32)
        slots = self._slots(s.block_tables, np.arange(b), positions)
        tables = np.zeros((b_pad, m_pad), np.int32)
        w = min(m_pad, s.block_tables.shape[1])
        tables[:b, :w] = s.block_tables[:, :w]
        args = (_pad(s.token_ids, b_pad, 0), _pad(positions, b_pad, 0), _pad(slots, b_pad, 0),
                tables, _pad(s.context_lens.astype(np.int32), b_pad, 1))
        return self.decode_step(*map(self._tensor, args))

    # ---- step -----------------------------------------------------------------------------
    def step(self, s: StepInput) -> StepOutput:
        if s.is_prefill:
            # only the wanted rows go through the LM head; a row both sampled and saved runs once
            out_index = np.unique(np.concatenate([s.sample_rows, s.logits_rows])).astype(np.int32)
            logits, ids, best = self._run_prefill(s, out_index)
            sample_at = np.searchsorted(out_index, s.sample_rows)
            logits_at = np.searchsorted(out_index, s.logits_rows)
        else:
            logits, ids, best = self._run_decode(s)
            sample_at, logits_at = s.sample_rows, s.logits_rows
        sp = s.sampling
        if not np.any(sp.temperature > 0) and np.all(sp.repetition_penalty == 1):
            tokens = ids.asnumpy()[sample_at]
            chosen = best.asnumpy()[sample_at]
            rows = logits.asnumpy()[logits_at] if len(logits_at) else _no_rows(self.cfg.vocab_size)
        else:
            full = logits.asnumpy()
            tokens, chosen = sample(full[sample_at], s.sampling)
            rows = full[logits_at] if len(logits_at) else _no_rows(self.cfg.vocab_size)
        return StepOutput(tokens.astype(np.int32), chosen.astype(np.float32), rows)

    # ---- warm-up ----------------------------------------------------------------------------
    def warmup(self, progress: Callable[[int, int, str], None] | None = None) -> float:
        """Compile every ladder shape (fixed order) with dummy inputs; returns seconds taken.

        Dummy steps only write the trash block, so the cache content of real blocks is untouched.
        """
        start = time.time()
        shapes = self.ladder.shapes()
        for i, (kind, shape) in enumerate(shapes):
            if progress:
                progress(i, len(shapes), f"{kind} {shape}")
            z = np.zeros
            if kind == "prefill" and self.paged_prefill is not None:
                t, _, rows = shape  # the context bucket does not shape this graph: compiled once per (T, S)
                args = (z(t, np.int32), z(t, np.int32), z((t, self.ladder.decode_blocks[-1]), np.int32),
                        z(rows, np.int32))
                out = self.paged_prefill(*map(self._tensor, args))
            elif kind == "prefill":
                t, c, rows = shape
                args = (z(t, np.int32), z(t, np.int32), z(t, np.int32), np.full(t, -1, np.int32),
                        z(c, np.int32), np.full(c, -2, np.int32), z(c, np.int32), z(rows, np.int32))
                out = self.prefill_step(*map(self._tensor, args))
            else:
                b, m = shape
                args = (z(b, np.int32), z(b, np.int32), z(b, np.int32), z((b, m), np.int32),
                        np.ones(b, np.int32))
                out = self.decode_step(*map(self._tensor, args))
            out[1].asnumpy()
        if progress:
            progress(len(shapes), len(shapes), "done")
        return time.time() - start


def compile_cache_key(cfg: LlamaConfig, rt: RuntimeConfig, ladder: Ladder) -> str:
    import hashlib

    import mindspore

    graph_rt = dataclasses.replace(rt, checkpoint="", tokenizer="", compile_cache="")
    h = hashlib.sha256(repr((cfg, graph_rt, ladder, mindspore.__version__, graph_fingerprint(rt))).encode())
    for name in ("model.py", "runner.py"):
        with open(os.path.join(os.path.dirname(__file__), name), "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:16]


def _pad(a: np.ndarray, size: int, value: int) -> np.ndarray:
    out = np.full(size, value, dtype=np.int32)
    out[:len(a)] = a
    return out


def _no_rows(vocab: int) -> np.ndarray:
    return np.zeros((0, vocab), np.float32)


def runner_from_config(pc: PredictConfig, ladder: Ladder,
                       weights: dict[str, np.ndarray] | None = None) -> ModelRunner:
    """A runner for a predict config; weights come from `pc.runtime.checkpoint` unless given."""
    if weights is None:
        from .checkpoint import load_weights
        if not pc.runtime.checkpoint:
            raise ValueError("config key 'model.model_config.checkpoint_name_or_path': no checkpoint given")
        weights = load_weights(pc.runtime.checkpoint, pc.model)
    return ModelRunner(pc.model, pc.runtime, weights, ladder)
