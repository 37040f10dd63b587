"""The run summary, with vLLM benchmark_serving's metric definitions so figures compare across tools.

Latency figures cover completed requests only. TTFT: send to first token. TPOT: (E2E - TTFT) /
(output tokens - 1) per request with more than one token. ITL: every gap between token-carrying
chunks of every completed request. E2E: send to end of answer. All in milliseconds.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, fields
from typing import Dict, List, Optional, Sequence

import numpy as np

from .client import RequestRecord

REASON_CHARS = 120  # failure reasons are grouped by their first characters (bodies vary per request)


@dataclass(frozen=True)
class LatencyStats:
    mean: Optional[float]
    median: Optional[float]
    p90: Optional[float]
    p99: Optional[float]

    @classmethod
    def of_seconds(cls, values: Sequence[float]) -> LatencyStats:
        if len(values) == 0:
            return cls(None, None, None, None)
        ms = np.asarray(values, dtype=np.float64) * 1000.0
        return cls(float(ms.mean()), float(np.median(ms)), float(np.percentile(ms, 90)),
                   float(np.percentile(ms, 99)))


@dataclass(frozen=True)
class Summary:
    completed: int
    failed: int
    failure_reasons: Dict[str, int]
    retries: int
    duration_s: float
    request_throughput: Optional[float]   # completed requests / s
    output_throughput: Optional[float]    # output tokens / s
    total_token_throughput: Optional[float]
    total_input_tokens: int
    total_output_tokens: int
    ttft_ms: LatencyStats
    tpot_ms: LatencyStats
    itl_ms: LatencyStats
    e2e_ms: LatencyStats


def summarize(records: Sequence[RequestRecord], duration: float) -> Summary:
    done = [r for r in records if r.ok]
    reasons = Counter((r.error or "unknown")[:REASON_CHARS] for r in records if not r.ok)
    total_in = sum(r.input_tokens for r in done)
    total_out = sum(r.output_tokens for r in done)

    def per_second(amount: int) -> Optional[float]:
        return amount / duration if duration > 0 else None

    timed = [r for r in done if r.first_token_time is not None]
    tpot = [r.tpot for r in done if r.tpot is not None]
    itl: List[float] = [gap for r in done for gap in r.itl]
    return Summary(
        completed=len(done),
        failed=len(records) - len(done),
        failure_reasons=dict(reasons.most_common()),
        retries=sum(r.retries for r in records),
        duration_s=duration,
        request_throughput=per_second(len(done)),
        output_throughput=per_second(total_out),
        total_token_throughput=per_second(total_in + total_out),
        total_input_tokens=total_in,
        total_output_tokens=total_out,
        ttft_ms=LatencyStats.of_seconds([r.first_token_time for r in timed]),
        tpot_ms=LatencyStats.of_seconds(tpot),
        itl_ms=LatencyStats.of_seconds(itl),
        e2e_ms=LatencyStats.of_seconds([r.res_time for r in done]),
    )


def _num(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def format_summary(s: Summary) -> str:
    lines = [
        f"{'Successful requests:':<40}{s.completed}",
        f"{'Failed requests:':<40}{s.failed}",
        *(f"  {count:>6} x {reason}" for reason, count in s.failure_reasons.items()),
        f"{'Connection retries:':<40}{s.retries}",
        f"{'Duration (s):':<40}{s.duration_s:.2f}",
        f"{'Total input tokens:':<40}{s.total_input_tokens}",
        f"{'Total generated tokens:':<40}{s.total_output_tokens}",
        f"{'Request throughput (req/s):':<40}{_num(s.request_throughput)}",
        f"{'Output token throughput (tok/s):':<40}{_num(s.output_throughput)}",
        f"{'Total token throughput (tok/s):':<40}{_num(s.total_token_throughput)}",
    ]
    for title, stats in (("TTFT", s.ttft_ms), ("TPOT", s.tpot_ms), ("ITL", s.itl_ms), ("E2E latency", s.e2e_ms)):
        lines.append(f"{'-' * 10} {title} (ms) {'-' * 10}")
        lines.extend(f"{name + ':':<40}{_num(getattr(stats, name))}" for name in (f.name for f in fields(stats)))
    return "\n".join(lines)
