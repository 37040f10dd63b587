"""HF transformers as a peer: static batched `generate`, the way common batch-inference scripts serve.

    .venv/bin/python experiments/peers/hf_static_batch.py --model HF_FOLDER --requests requests.json \
        [--batch 16] [--threads 2] [--out hf.json]

requests.json is a list of {"prompt_ids": [BOS, ...], "max_new_tokens": n} in trace order (the
prompts already tokenized with the kit's tokenizer, so every system sees the same ids). Requests
are cut into consecutive batches; each batch is left-padded and decoded greedily with
max_new_tokens = the largest request of the batch, so short requests ride along until the longest
finishes. Useful tokens of a request: what it generated up to its own length and its first EOS;
the rest of the batch's decode slots are waste. Needs torch and transformers (requirements-bench.txt).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional, Sequence


@dataclass(frozen=True)
class Request:
    prompt_ids: list[int]
    max_new_tokens: int


@dataclass(frozen=True)
class BatchStat:
    size: int
    padded_prompt_len: int
    max_new_tokens: int
    decode_steps: int               # generate stops early once every row has hit EOS
    seconds: float
    useful_tokens: int


@dataclass
class StaticBatchResult:
    batch_size: int
    threads: int
    requests: int
    wall_s: float                   # every batch, model loading and warm-up excluded
    requested_tokens: int
    useful_tokens: int
    decode_slots: int               # rows x decode steps actually computed
    prompt_tokens: int
    padded_prompt_slots: int        # rows x padded prompt length
    batches: list[BatchStat] = field(default_factory=list)
    outputs: list[list[int]] = field(default_factory=list)   # each request's useful tokens, trace order

    @property
    def tokens_per_s(self) -> float:
        return self.useful_tokens / self.wall_s

    @property
    def wasted_decode_slots(self) -> int:
        return self.decode_slots - self.useful_tokens

    def to_json(self) -> dict:
        return {**asdict(self), "tokens_per_s": self.tokens_per_s,
                "requested_tokens_per_s": self.requested_tokens / self.wall_s,
                "wasted_decode_slots": self.wasted_decode_slots,
                "wasted_prompt_slots": self.padded_prompt_slots - self.prompt_tokens}


def read_requests(path: str) -> list[Request]:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, list) or not data:
        raise ValueError(f"{path}: must be a non-empty JSON list of requests")
    out = []
    for i, item in enumerate(data):
        ids, n = (item.get("prompt_ids"), item.get("max_new_tokens")) if isinstance(item, dict) else (None, None)
        if not (isinstance(ids, list) and ids and all(isinstance(t, int) and t >= 0 for t in ids)):
            raise ValueError(f"{path}: request {i}: 'prompt_ids' must be a non-empty list of token ids")
        if not (isinstance(n, int) and n >= 1):
            raise ValueError(f"{path}: request {i}: 'max_new_tokens' must be an integer >= 1")
        out.append(Request(ids, n))
    return out


def useful_length(generated: Sequence[int], requested: int, eos_id: int) -> int:
    """Tokens a request asked for and got: up to its length, its first EOS included."""
    tokens = list(generated[:requested])
    return tokens.index(eos_id) + 1 if eos_id in tokens else len(tokens)


def load_model(folder: str, threads: int):
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise FileNotFoundError(f"--model: {folder!r} is not an HF folder (no config.json)")
    os.environ["HF_HUB_OFFLINE"] = "1"   # a local folder only: never reach for a model hub
    import torch
    from transformers import LlamaForCausalLM

    torch.set_num_threads(threads)
    model = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model.eval()
    return model


def generate_batch(model, batch: Sequence[Request], pad_id: int, eos_id: int) -> tuple[list[list[int]], int]:
    """Greedy continuations of one left-padded batch, and the padded prompt length."""
    import torch

    width = max(len(r.prompt_ids) for r in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, r in enumerate(batch):
        ids[row, width - len(r.prompt_ids):] = torch.tensor(r.prompt_ids)
        mask[row, width - len(r.prompt_ids):] = 1
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, num_beams=1,
                             max_new_tokens=max(r.max_new_tokens for r in batch),
                             pad_token_id=pad_id, eos_token_id=eos_id)
    return out[:, width:].tolist(), width


def run_static_batches(model, requests: Sequence[Request], batch_size: int, threads: int, pad_id: int,
                       eos_id: int, on_batch: Optional[Callable[[int, int, BatchStat], None]] = None
                       ) -> StaticBatchResult:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    generate_batch(model, [Request(requests[0].prompt_ids, 2)], pad_id, eos_id)   # warm-up, not timed
    result = StaticBatchResult(batch_size, threads, len(requests), 0.0,
                               sum(r.max_new_tokens for r in requests), 0, 0,
                               sum(len(r.prompt_ids) for r in requests), 0)
    count = (len(requests) + batch_size - 1) // batch_size
    start = time.perf_counter()
    for b in range(count):
        batch = requests[b * batch_size:(b + 1) * batch_size]
        t0 = time.perf_counter()
        rows, width = generate_batch(model, batch, pad_id, eos_id)
        seconds = time.perf_counter() - t0
        kept = [row[:useful_length(row, r.max_new_tokens, eos_id)] for row, r in zip(rows, batch)]
        result.outputs.extend(kept)
        useful = sum(map(len, kept))
        stat = BatchStat(len(batch), width, max(r.max_new_tokens for r in batch), len(rows[0]), seconds, useful)
        result.batches.append(stat)
        result.useful_tokens += useful
        result.decode_slots += stat.size * stat.decode_steps
        result.padded_prompt_slots += stat.size * width
        if on_batch is not None:
            on_batch(b, count, stat)
    result.wall_s = time.perf_counter() - start
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="HF folder (config.json + safetensors)")
    p.add_argument("--requests", required=True, help="JSON list of {prompt_ids, max_new_tokens}")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--out", help="write the result JSON here")
    args = p.parse_args(argv)
    if args.batch < 1 or args.threads < 1:
        p.error("--batch and --threads must be >= 1")
    try:
        requests = read_requests(args.requests)
        model = load_model(args.model, args.threads)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    pad_id, eos_id = model.config.pad_token_id or 0, model.config.eos_token_id

    def progress(b: int, count: int, s: BatchStat) -> None:
        print(f"  hf: batch {b + 1}/{count}: {s.size} x (prompt {s.padded_prompt_len} + {s.decode_steps} steps) "
              f"in {s.seconds:.1f} s, {s.useful_tokens} useful tokens", flush=True)

    result = run_static_batches(model, requests, args.batch, args.threads, pad_id, eos_id, progress)
    print(f"hf: {result.requests} requests in {result.wall_s:.1f} s, {result.tokens_per_s:.1f} useful tok/s, "
          f"{result.wasted_decode_slots} of {result.decode_slots} decode slots wasted", flush=True)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result.to_json(), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
