"""Parts of the serving judge: trace building, HTTP clients per backend, metrics and plot.

Knows the server only through HTTP (PROTOCOL.md §1-2): no model or server package is imported.
"""
from __future__ import annotations

from .client import Backend, RequestRecord, RunResult, legacy_backend, openai_backend, run_trace, run_trace_async
from .metrics import LatencyStats, Summary, format_summary, summarize
from .trace import TraceRequest, arrival_offsets, build_trace, find_data_file, load_records, load_tokenizer, make_prompt

__all__ = [
    "Backend", "LatencyStats", "RequestRecord", "RunResult", "Summary", "TraceRequest", "arrival_offsets",
    "build_trace", "find_data_file", "format_summary", "legacy_backend", "load_records", "load_tokenizer",
    "make_prompt", "openai_backend", "run_trace", "run_trace_async", "summarize",
]
