"""Continuous batching: which sequences run in the next step, and what happens after it.

A step is either a prefill step (new tokens of several waiting prompts, packed up to the token
budget, chunked when one prompt alone exceeds it) or a decode step (one token for every running
sequence). Prefill goes first so new requests join the running batch as soon as there is room,
but never twice in a row while sequences wait to decode: a burst of arrivals would otherwise
stall every running stream for the whole burst. With mixed steps (`Ladder.mixed_rows`, the paged
prefill) every step carries the whole decode batch and fills the rest of its token budget with
prompt tokens, so running streams never wait for a prefill. A finished sequence leaves at once and frees its
blocks. When a decode step cannot get a block,
the most recently admitted sequence is preempted (its blocks freed, recomputed later).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from msllama.runner import Ladder, StepInput, StepOutput
from msllama.sampling import SamplingBatch

from .block_manager import BlockManager
from .sequence import Sequence, Status


@dataclass
class Scheduled:
    seq: Sequence
    num_new: int                        # tokens fed this step
    sample: bool                        # the step produces this sequence's next token
    logits_positions: list[int] = field(default_factory=list)   # task 2 rows to return


@dataclass
class Batch:
    is_prefill: bool
    items: list[Scheduled]
    mixed: bool = False                 # a prefill step that also carries the decode batch

    @property
    def kind(self) -> str:
        return "mixed" if self.mixed else "prefill" if self.is_prefill else "decode"


@dataclass
class Sampled:
    seq: Sequence
    token_id: int
    logit: float
    finish_reason: str | None           # "eos" | "length" | None


@dataclass(frozen=True)
class SchedulerLimits:
    max_running: int                    # sequences holding KV (the largest decode bucket)
    max_prefill_seqs: int
    max_len: int                        # prompt + generated tokens
    eos_token_id: int
    save_logits_every: int = 0          # 0 = off; else rows at positions p % n == 0, p > 0


class Scheduler:
    def __init__(self, limits: SchedulerLimits, ladder: Ladder, blocks: BlockManager):
        self.limits, self.ladder, self.blocks = limits, ladder, blocks
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []       # admission order
        self.num_preemptions = 0
        self.prefix_queried = 0                 # tokens looked up / served by the prefix cache
        self.prefix_hits = 0
        self.rejected: list[Sequence] = []      # can never fit a compiled shape (config bug)
        self._prefilled_last = False

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def remove(self, seq: Sequence) -> None:
        """Take a sequence out wherever it is (finished or aborted) and free its blocks."""
        if seq.status is Status.RUNNING:
            self.running.remove(seq)
        elif seq.status is Status.WAITING and seq in self.waiting:
            self.waiting.remove(seq)
        self.blocks.release(seq)
        seq.status = Status.FINISHED

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # ---- choosing a step -----------------------------------------------------------------------
    def schedule(self) -> Batch | None:
        if self.ladder.mixed_rows:
            decode = self._schedule_decode()
            return self._schedule_prefill(decode.items if decode else []) or decode
        batch = None if self._prefilled_last else self._schedule_prefill()
        if batch is None:
            batch = self._schedule_decode()
        if batch is None and self._prefilled_last:
            batch = self._schedule_prefill()    # nothing decodes yet: keep prefilling
        self._prefilled_last = batch is not None and batch.is_prefill
        return batch

    def _logits_positions(self, seq: Sequence, start: int, end: int) -> list[int]:
        n = self.limits.save_logits_every
        if not n:
            return []
        first = max(n, -(-start // n) * n)
        return [p for p in range(first, end, n) if p not in seq.saved_positions]

    def _schedule_prefill(self, carried: list[Scheduled] = ()) -> Batch | None:
        """Prompt tokens up to the budget, after the `carried` decode items of a mixed step."""
        budget = self.ladder.max_prefill_tokens
        items: list[Scheduled] = []
        tokens = len(carried)
        context = sum(i.seq.num_computed + 1 for i in carried)
        rows = sum(1 + len(i.logits_positions) for i in carried)
        # sequences part-way through a chunked prompt first, then new ones in arrival order
        candidates = [s for s in self.running if s.num_uncomputed > 1 or s.num_generated == 0]
        admitted = 0
        for seq in candidates + list(self.waiting):
            new = seq.status is Status.WAITING
            if new and (len(self.running) + admitted >= self.limits.max_running
                        or len(items) >= self.limits.max_prefill_seqs):
                break
            if tokens >= budget:
                break
            if new and not seq.block_table:
                self.blocks.match_prefix(seq)
            remaining = seq.num_uncomputed
            chunk = min(remaining, budget - tokens)
            if chunk < remaining and items:
                self._undo_match(seq, new)
                break                           # only a prompt alone among its step's prompts is chunked
            sample = chunk == remaining
            positions = self._logits_positions(seq, seq.num_computed, seq.num_computed + chunk)
            shape = self.ladder.prefill_shape(tokens + chunk, context + seq.num_computed + chunk,
                                              rows + int(sample) + len(positions))
            # a new sequence must leave one free block per running one, so the next decode step
            # does not have to preempt what was just admitted
            reserve = len(self.running) + admitted if new else 0
            need = self.blocks.blocks_needed(seq, seq.num_computed + chunk)
            if shape is None or self.blocks.num_free - need < reserve:
                self._undo_match(seq, new)
                if shape is None and not items and not carried and len(self.running) == int(not new):
                    self.remove(seq)            # alone in an idle engine and still no shape
                    self.rejected.append(seq)
                break
            self.blocks.allocate(seq, seq.num_computed + chunk)
            tokens += chunk
            context += seq.num_computed + chunk
            rows += int(sample) + len(positions)
            items.append(Scheduled(seq, chunk, sample, positions))
            if new:
                admitted += 1
            if tokens >= budget:
                break
        for item in items:
            if item.seq.status is Status.WAITING:
                self.prefix_queried += item.seq.num_tokens
                self.prefix_hits += item.seq.num_computed   # nothing computed yet: all cached
                self.waiting.remove(item.seq)
                item.seq.status = Status.RUNNING
                self.running.append(item.seq)
        return Batch(True, list(carried) + items, mixed=bool(carried)) if items else None

    def _undo_match(self, seq: Sequence, new: bool) -> None:
        """A waiting sequence that did not fit gives back the cached blocks it matched."""
        if new and seq.block_table:
            self.blocks.release(seq)

    def _schedule_decode(self) -> Batch | None:
        items: list[Scheduled] = []
        for seq in list(self.running):
            if seq.status is not Status.RUNNING or not seq.in_decode:
                continue
            while not self.blocks.allocate(seq, seq.num_tokens):
                victim = self.running[-1]
                self._preempt(victim)
                if victim is seq:
                    break
            if seq.status is Status.RUNNING:
                p = seq.num_computed
                items.append(Scheduled(seq, 1, True, self._logits_positions(seq, p, p + 1)))
        items = [i for i in items if i.seq.status is Status.RUNNING]  # a later preemption may hit
        return Batch(False, items) if items else None

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.blocks.release(seq)
        seq.status = Status.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    # ---- step input / output -----------------------------------------------------------------
    def build_input(self, batch: Batch) -> StepInput:
        items = batch.items
        seq_lens = np.fromiter((i.num_new for i in items), np.int32, len(items))
        starts = [i.seq.num_computed for i in items]
        if batch.is_prefill:
            token_ids = np.fromiter((t for i, s in zip(items, starts)
                                     for t in i.seq.token_ids[s:s + i.num_new]), np.int32, int(seq_lens.sum()))
        else:
            token_ids = np.fromiter((i.seq.token_ids[-1] for i in items), np.int32, len(items))
        context_lens = np.asarray(starts, np.int32) + seq_lens
        width = max(len(i.seq.block_table) for i in items)
        tables = np.zeros((len(items), width), np.int32)
        for r, i in enumerate(items):
            tables[r, :len(i.seq.block_table)] = i.seq.block_table
        ends = np.cumsum(seq_lens) - 1
        sampled = [r for r, i in enumerate(items) if i.sample]
        logits_rows = [int(ends[r] - (context_lens[r] - 1 - p))
                       for r, i in enumerate(items) for p in i.logits_positions]
        params = [items[r].seq.params for r in sampled]
        penalised = [p.repetition_penalty != 1.0 for p in params]
        histories = [items[r].seq.token_ids if pen else () for r, pen in zip(sampled, penalised)]
        sampling = SamplingBatch(
            temperature=np.array([p.temperature for p in params], np.float32),
            top_k=np.array([p.top_k for p in params], np.int32),
            top_p=np.array([p.top_p for p in params], np.float32),
            repetition_penalty=np.array([p.repetition_penalty for p in params], np.float32),
            seed=np.array([p.seed for p in params], np.int64),
            position=context_lens[sampled],
            history_ids=np.fromiter((t for h in histories for t in h), np.int32),
            history_offsets=np.concatenate([[0], np.cumsum([len(h) for h in histories])]).astype(np.int32))
        return StepInput(batch.is_prefill, token_ids, seq_lens, context_lens, tables,
                         ends[sampled].astype(np.int32), sampling, np.asarray(logits_rows, np.int32))

    def update(self, batch: Batch, out: StepOutput) -> tuple[list[Sampled], list[tuple[Sequence, int, np.ndarray]]]:
        """Apply a step's results: new tokens, finished sequences leave; returns the sampled
        tokens and the task-2 logits rows as (sequence, position, row)."""
        sampled: list[Sampled] = []
        rows: list[tuple[Sequence, int, np.ndarray]] = []
        k = r = 0
        for item in batch.items:
            seq = item.seq
            seq.num_computed += item.num_new
            self.blocks.commit(seq)
            for p in item.logits_positions:
                seq.saved_positions.add(p)
                rows.append((seq, p, out.logits[r]))
                r += 1
            if not item.sample:
                continue
            token, logit = int(out.next_tokens[k]), float(out.next_logits[k])
            k += 1
            seq.token_ids.append(token)
            reason = None
            if token == self.limits.eos_token_id and not seq.params.ignore_eos:
                reason = "eos"
            elif seq.num_generated >= seq.params.max_new_tokens or seq.num_tokens >= self.limits.max_len:
                reason = "length"
            if reason:
                seq.finish_reason = reason
                self.remove(seq)
            sampled.append(Sampled(seq, token, logit, reason))
        return sampled, rows
