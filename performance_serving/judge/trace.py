"""Building the request trace: prompts and output lengths from an alpaca dataset, arrival times.

The rules follow the contest judge so that our trace is the trace users' scores were made with:
prompt = instruction + ":" + input (or the instruction alone), max_new_tokens = the number of
sentencepiece pieces of the reference output (no BOS), records cycled in order, and Poisson gaps
of round(1/qps, 2) seconds drawn at millisecond resolution.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import sentencepiece as spm

RECORD_KEYS = ("instruction", "input", "output")


@dataclass(frozen=True)
class TraceRequest:
    index: int             # position in the trace (send order)
    record: int            # index of the dataset record it was made from
    prompt: str
    max_new_tokens: int
    input_tokens: int      # prompt tokens the server sees, BOS included
    send_at: float         # seconds after the start of the run


def find_data_file(name: str, search_dirs: Sequence[Path]) -> Path:
    """The first `search_dirs[i] / name` that exists; the error lists every place looked at."""
    candidates = [Path(d) / name for d in search_dirs]
    for path in candidates:
        if path.is_file():
            return path
    looked = ", ".join(str(p) for p in candidates)
    raise FileNotFoundError(f"{name} not found (looked at: {looked})")


def load_records(path: str | Path) -> list[dict[str, str]]:
    """Read an alpaca-format JSON list and check every record has the three string fields."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, list) or not data:
        raise ValueError(f"{path}: must be a non-empty JSON list of records")
    for i, record in enumerate(data):
        if not isinstance(record, dict):
            raise ValueError(f"{path}: record {i} must be an object with keys {RECORD_KEYS}")
        for key in RECORD_KEYS:
            if not isinstance(record.get(key), str):
                raise ValueError(f"{path}: record {i}: key {key!r} must be present and a string")
    return data


def make_prompt(record: dict[str, str]) -> str:
    if record["input"]:
        return record["instruction"] + ":" + record["input"]
    return record["instruction"]


def arrival_offsets(num_requests: int, qps: float, seed: int) -> np.ndarray:
    """Send times (s) of each request: the first at 0, then Poisson gaps around round(1/qps, 2)."""
    if qps <= 0:
        raise ValueError(f"qps must be > 0, got {qps}")
    interval_ms = round(1.0 / qps, 2) * 1000
    gaps = np.random.default_rng(seed).poisson(interval_ms, num_requests - 1) / 1000.0
    return np.concatenate([[0.0], np.cumsum(gaps)])


def load_tokenizer(path: str | Path) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=str(path))


def build_trace(
    records: Sequence[dict[str, str]],
    tokenizer: spm.SentencePieceProcessor,
    num_requests: int,
    qps: float,
    seed: int,
) -> list[TraceRequest]:
    """`num_requests` requests cycling through `records`, with seeded arrival times."""
    if num_requests < 1:
        raise ValueError(f"num_requests must be >= 1, got {num_requests}")
    bos = 1 if tokenizer.bos_id() >= 0 else 0
    # Tokenize each distinct record once: a long trace cycles over a short dataset.
    used = records[: min(len(records), num_requests)]
    prompts = [make_prompt(r) for r in used]
    input_tokens = [len(ids) + bos for ids in tokenizer.encode(prompts)]
    max_new = [len(pieces) for pieces in tokenizer.encode([r["output"] for r in used], out_type=str)]
    offsets = arrival_offsets(num_requests, qps, seed)
    trace = []
    for i in range(num_requests):
        r = i % len(used)
        trace.append(TraceRequest(i, r, prompts[r], max_new[r], input_tokens[r], float(offsets[i])))
    return trace
