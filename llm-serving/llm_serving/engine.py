"""The engine thread: request queue -> scheduler -> worker -> token events, off the asyncio loop.

HTTP handlers call `submit` (cheap, thread-safe) and iterate the returned handle; everything that
waits for the model happens on the engine thread. Each loop iteration sends step N to the agents
first and only then detokenises and delivers step N-1's tokens, so that host work, the HTTP side's
included, overlaps the model's. Tokens reach the asyncio loop in one `call_soon_threadsafe` per step
(the events of a step that failed in a second one).
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
import time
import uuid
from collections import deque

import numpy as np

from msllama import logits_files
from msllama.runner import StepInput
from msllama.tokenizer import IncrementalDetokenizer, Tokenizer

from .block_manager import BlockManager
from .config import ServingConfig
from .messages import ERROR_ABNORMAL_STOP, EngineDeadError, QueueFullError, SamplingParams, TokenEvent
from .scheduler import Batch, Sampled, Scheduler, SchedulerLimits
from .sequence import Sequence, Status

log = logging.getLogger("llm_serving.engine")


class RequestHandle:
    """Async iterator over one request's TokenEvents; the last one has `finish_reason` set."""

    def __init__(self, engine: "AsyncEngine", seq: Sequence, loop: asyncio.AbstractEventLoop):
        self._engine, self.seq, self.loop = engine, seq, loop
        self.queue: asyncio.Queue[TokenEvent] = asyncio.Queue()
        self.detok: IncrementalDetokenizer | None = None
        self.done = False

    @property
    def request_id(self) -> str:
        return self.seq.request_id

    @property
    def prompt_tokens(self) -> int:
        return self.seq.num_prompt

    def __aiter__(self) -> "RequestHandle":
        return self

    async def __anext__(self) -> TokenEvent:
        if self.done:
            raise StopAsyncIteration
        event = await self.queue.get()
        if event.finish_reason is not None:
            self.done = True
        return event

    def abort(self, reason: str = "abort") -> None:
        """Stop generating (client gone, or "stop": a stop string matched); blocks are freed at
        the next step. Idempotent."""
        if not self.done:
            self.done = True
            self._engine._request_abort(self, reason)


class AsyncEngine:
    def __init__(self, config: ServingConfig, worker, tokenizer: Tokenizer, metrics):
        self.config, self.worker, self.tokenizer, self.metrics = config, worker, tokenizer, metrics
        self.blocks = BlockManager(config.num_blocks, config.block_size, config.enable_prefix_caching)
        save_every = config.save_logits_every if config.save_logits_dir else 0
        limits = SchedulerLimits(max_running=config.max_decode_batch, max_prefill_seqs=config.max_prefill_seqs,
                                 max_len=config.max_generate_length, eos_token_id=config.end_token,
                                 save_logits_every=save_every)
        self.scheduler = Scheduler(limits, config.ladder, self.blocks)
        self.failure: str | None = None
        self._accepting = True
        self._stop = False
        self._cond = threading.Condition()
        self._inbox: deque[RequestHandle] = deque()
        self._aborts: deque[tuple[RequestHandle, str]] = deque()
        self._handles: dict[int, RequestHandle] = {}
        self._ids = itertools.count()
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)
        self._saver: _LogitsSaver | None = _LogitsSaver(config.save_logits_dir) if save_every else None
        self._seen_preemptions = self._seen_queried = self._seen_hits = 0

    # ---- called from the asyncio side --------------------------------------------------------
    @property
    def healthy(self) -> bool:
        """False once an agent died (noticed even while idle), the engine failed or stopped."""
        if not self._thread.is_alive():
            return False
        if self.failure is None and not self.worker.alive():
            self.failure = ERROR_ABNORMAL_STOP + " (a model agent died)"
            with self._cond:
                self._cond.notify()     # the engine thread fails whatever is still queued
        return self.failure is None

    @property
    def num_waiting(self) -> int:
        return len(self._inbox) + len(self.scheduler.waiting)

    def submit(self, prompt_ids: list[int], params: SamplingParams, request_id: str | None = None) -> RequestHandle:
        if self.failure is not None:
            raise EngineDeadError(self.failure)
        if not self._accepting:
            raise EngineDeadError("the server is shutting down")
        if self.num_waiting >= self.config.max_queue_size:
            raise QueueFullError(f"{self.num_waiting} requests are waiting (max_queue_size)")
        seq = Sequence(next(self._ids), request_id or uuid.uuid4().hex, list(prompt_ids),
                       len(prompt_ids), params)
        handle = RequestHandle(self, seq, asyncio.get_running_loop())
        self.metrics.on_arrival(len(prompt_ids))
        with self._cond:
            self._inbox.append(handle)
            self._cond.notify()
        return handle

    def _request_abort(self, handle: RequestHandle, reason: str) -> None:
        with self._cond:
            self._aborts.append((handle, reason))
            self._cond.notify()

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def shutdown(self, drain_seconds: float) -> None:
        """Stop accepting, let in-flight requests finish for up to `drain_seconds`, abort the
        rest, stop the thread. The worker is the caller's to shut down."""
        self._accepting = False
        deadline = time.monotonic() + drain_seconds
        while time.monotonic() < deadline and self._thread.is_alive() and (
                self._inbox or self.scheduler.has_work):
            time.sleep(0.05)
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout=30)
        if self._saver:
            self._saver.close()

    # ---- engine thread -----------------------------------------------------------------------
    def _run(self) -> None:
        pending: list[Sampled] = []
        stalled = False     # work exists but nothing fit last time: wait for a change, don't spin
        while True:
            with self._cond:
                if stalled and not (self._inbox or self._aborts or self._stop):
                    self._cond.wait(timeout=0.01)
                while not (self._inbox or self._aborts or self._stop or pending or self.scheduler.has_work):
                    self._cond.wait()
                new, self._inbox = list(self._inbox), deque()
                aborts, self._aborts = list(self._aborts), deque()
                stopping = self._stop
            events: list[tuple[RequestHandle, TokenEvent]] = []
            for handle in new:
                self._handles[handle.seq.seq_id] = handle
                self.scheduler.add(handle.seq)
            for handle, reason in aborts:
                self._finish(handle, reason, events)
            if stopping:
                self._emit(pending, events)
                for handle in list(self._handles.values()):
                    self._finish(handle, "abort", events, error="the server shut down before this request finished")
                self._deliver(events)
                return
            if self.failure is not None:
                self._fail_all(events)
                self._deliver(events)
                pending = []
                continue
            t0 = time.perf_counter()
            batch = self.scheduler.schedule()
            t1 = time.perf_counter()
            for seq in self.scheduler.rejected:
                handle = self._handles.get(seq.seq_id)
                if handle:
                    self._finish(handle, "error", events, error=f"{ERROR_ABNORMAL_STOP} (the request "
                                 "fits no compiled shape: check scheduler_config against max_generate_length)")
            self.scheduler.rejected.clear()
            phases: dict[str, float] = {"schedule": t1 - t0}
            step = self._submit(batch, events, phases) if batch is not None else None
            stalled = batch is None
            t2 = time.perf_counter()
            self._emit(pending, events)       # overlaps the model step just submitted, and so does
            self._deliver(events)             # the HTTP side's writing of them: not while this thread
            events = []                       # prepares the next step, which waits for the GIL
            phases["detokenize"] = time.perf_counter() - t2
            pending = []
            if step is not None:
                pending = self._collect(batch, events, phases)
                self.metrics.on_step(batch.kind, len(step.token_ids), phases)
            self._deliver(events)
            self._update_gauges()

    def _submit(self, batch: Batch, events: list, phases: dict[str, float]) -> StepInput | None:
        """The step sent to the agents, or None when it could not be sent."""
        try:
            t0 = time.perf_counter()
            step = self.scheduler.build_input(batch)
            t1 = time.perf_counter()
            self.worker.submit(step)
            phases["prepare"], phases["submit"] = t1 - t0, time.perf_counter() - t1
            return step
        except Exception as exc:  # an agent died or the step could not be sent
            self._on_worker_error(batch, exc, events)
            return None

    def _collect(self, batch: Batch, events: list, phases: dict[str, float]) -> list[Sampled]:
        try:
            t0 = time.perf_counter()
            out = self.worker.collect()
            t1 = time.perf_counter()
        except Exception as exc:
            self._on_worker_error(batch, exc, events)
            return []
        sampled, rows = self.scheduler.update(batch, out)
        phases.update(wait=t1 - t0, model=self.worker.last_compute_seconds, update=time.perf_counter() - t1)
        if self._saver:
            for seq, position, row in rows:
                self._saver.put(seq.token_ids[:seq.num_prompt], position, row)
        return sampled

    def _on_worker_error(self, batch: Batch, exc: Exception, events: list) -> None:
        from .worker import AgentDiedError
        if isinstance(exc, AgentDiedError) or not self.worker.alive():
            self.failure = f"{ERROR_ABNORMAL_STOP} ({exc})"
            log.error("model agent failed: %s", exc)
            self._fail_all(events)
        else:  # one step failed (a bug, never the user's input): fail its requests, keep serving
            log.error("step failed: %s", exc)
            for item in batch.items:
                handle = self._handles.get(item.seq.seq_id)
                if handle:
                    self._finish(handle, "error", events, error=f"{ERROR_ABNORMAL_STOP} ({exc})")

    def _fail_all(self, events: list) -> None:
        for handle in list(self._handles.values()):
            self._finish(handle, "error", events, error=self.failure or ERROR_ABNORMAL_STOP)

    def _finish(self, handle: RequestHandle, reason: str, events: list, error: str | None = None) -> None:
        """End a request that did not finish by itself (abort, error, shutdown)."""
        seq = handle.seq
        if self._handles.pop(seq.seq_id, None) is None:
            return
        if seq.status is not Status.FINISHED:
            self.scheduler.remove(seq)
        seq.finish_reason = reason
        self.metrics.on_finish(time.monotonic() - seq.arrival, seq.num_generated, reason)
        events.append((handle, TokenEvent(-1, 0.0, "", seq.num_generated, reason, error)))

    def _emit(self, sampled: list[Sampled], events: list) -> None:
        """Detokenise sampled tokens into events (after the next step was sent)."""
        now = time.monotonic()
        for s in sampled:
            handle = self._handles.get(s.seq.seq_id)
            if handle is None:      # aborted meanwhile
                continue
            seq = s.seq
            if handle.detok is None:
                handle.detok = IncrementalDetokenizer(self.tokenizer, seq.token_ids[:seq.num_prompt])
                seq.first_token_time = now
                self.metrics.on_first_token(now - seq.arrival)
            else:
                self.metrics.on_token(now - seq.last_token_time)
            seq.last_token_time = now
            text = handle.detok.push(s.token_id)
            if s.finish_reason is not None:
                text += handle.detok.finish()
                del self._handles[seq.seq_id]
                self.metrics.on_finish(now - seq.arrival, seq.num_generated, s.finish_reason)
            events.append((handle, TokenEvent(s.token_id, s.logit, text, seq.num_generated - 1, s.finish_reason)))

    @staticmethod
    def _deliver(events: list[tuple[RequestHandle, TokenEvent]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for handle, event in events:
            by_loop.setdefault(handle.loop, []).append((handle.queue, event))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:    # the loop is closed: nobody is listening any more
                pass

    def _update_gauges(self) -> None:
        s = self.scheduler
        self.metrics.set_gauges(len(s.waiting) + len(self._inbox), len(s.running),
                                self.blocks.num_used, self.blocks.total)
        if s.prefix_queried != self._seen_queried:
            self.metrics.on_prefix_cache(s.prefix_queried - self._seen_queried, s.prefix_hits - self._seen_hits)
            self._seen_queried, self._seen_hits = s.prefix_queried, s.prefix_hits
        for _ in range(s.num_preemptions - self._seen_preemptions):
            self.metrics.on_preemption()
        self._seen_preemptions = s.num_preemptions


def _put_all(items: list) -> None:
    for q, event in items:
        q.put_nowait(event)


class _LogitsSaver:
    """Writes task-2 logits rows on a background thread, off the step loop."""

    def __init__(self, folder: str):
        import os
        os.makedirs(folder, exist_ok=True)
        self.folder = folder
        self.queue: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="logits-saver", daemon=True)
        self.thread.start()

    def put(self, prompt_ids: list[int], position: int, row: np.ndarray) -> None:
        self.queue.put((prompt_ids, position, np.array(row, copy=True)))

    def _run(self) -> None:
        while (item := self.queue.get()) is not None:
            logits_files.save_row(self.folder, *item)

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=60)
