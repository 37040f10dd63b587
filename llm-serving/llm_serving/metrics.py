"""Serving metrics, updated by the engine thread and rendered in the Prometheus text format.

Updates are plain arithmetic under one lock (microseconds per call); `render` takes the same lock
for a consistent snapshot. Names follow Prometheus conventions: counters end in `_total`,
durations are in seconds, histograms are cumulative `_bucket{le=...}` series with `_sum`/`_count`.
"""
from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass, field
from typing import Sequence

# Bucket bounds in seconds: CPU debug runs sit at the high end, Ascend runs at the low end.
TTFT_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 60.0, 120.0, 300.0, 600.0)
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
E2E_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 3600.0)


@dataclass
class Histogram:
    bounds: Sequence[float]
    counts: list[int] = field(init=False)       # per bucket, not cumulative; last = above all bounds
    total: float = 0.0

    def __post_init__(self) -> None:
        if list(self.bounds) != sorted(set(self.bounds)):
            raise ValueError(f"histogram bounds must be strictly increasing, got {self.bounds}")
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        # Prometheus buckets are `value <= le`: bisect_left puts a value equal to a bound in it.
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value


def _number(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Counters, gauges and latency histograms of one server."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests_received = 0
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.finished: dict[str, int] = {}
        self.preemptions = 0
        self.prefix_queried = 0
        self.prefix_hits = 0
        self.waiting = self.running = self.kv_used = self.kv_total = 0
        self.steps = {"prefill": 0, "decode": 0, "mixed": 0}       # engine steps by kind
        self.step_tokens = {"prefill": 0, "decode": 0, "mixed": 0}
        self.phase_seconds: dict[tuple[str, str], float] = {}   # engine time by (kind, phase), see on_step
        self.ttft = Histogram(TTFT_BUCKETS)
        self.tpot = Histogram(TPOT_BUCKETS)
        self.e2e = Histogram(E2E_BUCKETS)

    # ---- called by the engine ----------------------------------------------------------------
    def on_arrival(self, prompt_tokens: int) -> None:
        with self._lock:
            self.requests_received += 1
            self.prompt_tokens += prompt_tokens

    def on_first_token(self, ttft_s: float) -> None:
        with self._lock:
            self.ttft.observe(ttft_s)

    def on_token(self, gap_s: float) -> None:
        """Time between two consecutive tokens of one request (after the first)."""
        with self._lock:
            self.tpot.observe(gap_s)

    def on_finish(self, e2e_s: float, generated_tokens: int, reason: str) -> None:
        with self._lock:
            self.e2e.observe(e2e_s)
            self.generation_tokens += generated_tokens
            self.finished[reason] = self.finished.get(reason, 0) + 1

    def on_prefix_cache(self, queried_tokens: int, hit_tokens: int) -> None:
        with self._lock:
            self.prefix_queried += queried_tokens
            self.prefix_hits += hit_tokens

    def on_preemption(self) -> None:
        with self._lock:
            self.preemptions += 1

    def on_step(self, kind: str, tokens: int, phases: dict[str, float]) -> None:
        """One engine step ("prefill"/"decode"/"mixed": prompts and the decode batch) of `tokens` new
        tokens and where its time went."""
        with self._lock:
            self.steps[kind] += 1
            self.step_tokens[kind] += tokens
            for phase, seconds in phases.items():
                key = (kind, phase)
                self.phase_seconds[key] = self.phase_seconds.get(key, 0.0) + seconds

    def set_gauges(self, waiting: int, running: int, kv_used: int, kv_total: int) -> None:
        with self._lock:
            self.waiting, self.running, self.kv_used, self.kv_total = waiting, running, kv_used, kv_total

    # ---- exposition --------------------------------------------------------------------------
    def render(self) -> str:
        out: list[str] = []

        def family(name: str, kind: str, help_text: str) -> None:
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")

        def scalar(name: str, kind: str, help_text: str, value: float) -> None:
            family(name, kind, help_text)
            out.append(f"{name} {_number(value)}")

        def histogram(name: str, help_text: str, h: Histogram) -> None:
            family(name, "histogram", help_text)
            running = 0
            for bound, count in zip([*h.bounds, float("inf")], h.counts):
                running += count
                out.append(f'{name}_bucket{{le="{_number(bound)}"}} {running}')
            out.append(f"{name}_sum {_number(h.total)}")
            out.append(f"{name}_count {running}")

        with self._lock:
            scalar("llm_requests_waiting", "gauge", "Requests waiting to be scheduled.", self.waiting)
            scalar("llm_requests_running", "gauge", "Requests in the running batch.", self.running)
            scalar("llm_kv_blocks_used", "gauge", "KV-cache blocks in use.", self.kv_used)
            scalar("llm_kv_blocks_total", "gauge", "KV-cache blocks in the pool.", self.kv_total)
            scalar("llm_requests_received_total", "counter", "Requests accepted by the engine.",
                   self.requests_received)
            family("llm_requests_finished_total", "counter", "Finished requests by finish reason.")
            for reason in sorted(self.finished):
                out.append(f'llm_requests_finished_total{{reason="{_label(reason)}"}} {self.finished[reason]}')
            scalar("llm_prompt_tokens_total", "counter", "Prompt tokens of accepted requests.", self.prompt_tokens)
            scalar("llm_generation_tokens_total", "counter", "Tokens generated for finished requests.",
                   self.generation_tokens)
            scalar("llm_prefix_cache_queried_tokens_total", "counter",
                   "Prompt tokens looked up in the prefix cache.", self.prefix_queried)
            scalar("llm_prefix_cache_hit_tokens_total", "counter",
                   "Prompt tokens found in the prefix cache.", self.prefix_hits)
            scalar("llm_preemptions_total", "counter", "Sequences preempted (recomputed later).",
                   self.preemptions)
            for name, help_text, values in (
                    ("llm_engine_steps_total", "Engine steps by kind.", self.steps),
                    ("llm_engine_step_tokens_total", "Tokens fed to the model by step kind.", self.step_tokens)):
                family(name, "counter", help_text)
                out.extend(f'{name}{{kind="{_label(k)}"}} {v}' for k, v in sorted(values.items()))
            family("llm_engine_phase_seconds_total", "counter",
                   "Engine-thread time by phase: schedule, prepare (step inputs), submit and wait "
                   "(shared memory + TCP + the agents), model (the agents' own time, part of wait), "
                   "update, detokenize.")
            out.extend(f'llm_engine_phase_seconds_total{{kind="{_label(k)}",phase="{_label(p)}"}} {_number(v)}'
                       for (k, p), v in sorted(self.phase_seconds.items()))
            histogram("llm_time_to_first_token_seconds", "Time from arrival to the first token.", self.ttft)
            histogram("llm_time_per_output_token_seconds", "Time between consecutive tokens of a request.",
                      self.tpot)
            histogram("llm_e2e_request_latency_seconds", "Time from arrival to the end of a request.", self.e2e)
        return "\n".join(out) + "\n"
