"""Offline batched generation with the paged model, no server.

    python -m msllama.generate --config predict.yaml --prompt "Hello" [--prompt ...] [--max-new-tokens 32]

Prompts are prefilled together in one step (or several, within the ladder's token budget), then
decoded together; each sequence owns a contiguous run of blocks. The server's engine does the
same with a real block manager and continuous batching; this is the simple reference path.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from .runner import Ladder, ModelRunner, StepInput
from .sampling import SamplingBatch, SamplingParams
from .tokenizer import Tokenizer


def generate(runner: ModelRunner, prompts: list[list[int]], max_new_tokens: list[int],
             params: SamplingParams = SamplingParams(), stop_at_eos: bool = True) -> list[list[int]]:
    """Generated token ids per prompt (token ids include BOS as the tokenizer gave them)."""
    bs, ladder = runner.rt.block_size, runner.ladder
    out: list[list[int]] = [[] for _ in prompts]
    group = ladder.max_decode_batch
    for start in range(0, len(prompts), group):
        idx = list(range(start, min(start + group, len(prompts))))
        _generate_group(runner, [prompts[i] for i in idx], [max_new_tokens[i] for i in idx], params,
                        stop_at_eos, [out[i] for i in idx])
    return out


def _generate_group(runner: ModelRunner, prompts: list[list[int]], limits: list[int],
                    params: SamplingParams, stop_at_eos: bool, out: list[list[int]]) -> None:
    bs = runner.rt.block_size
    widths = [-(-(len(p) + n) // bs) for p, n in zip(prompts, limits)]
    if sum(widths) > runner.rt.num_blocks - 1:
        raise ValueError(f"{sum(widths)} KV blocks needed, the cache has {runner.rt.num_blocks - 1}")
    tables = np.zeros((len(prompts), max(widths)), np.int32)
    first = 1
    for r, w in enumerate(widths):
        tables[r, :w] = np.arange(first, first + w)
        first += w
    eos = runner.cfg.eos_token_id
    # prefill: as many whole prompts per step as the largest bucket holds
    budget = runner.ladder.max_prefill_tokens
    r = 0
    while r < len(prompts):
        rows = [r]
        while rows[-1] + 1 < len(prompts) and sum(len(prompts[i]) for i in rows) + len(prompts[rows[-1] + 1]) <= budget:
            rows.append(rows[-1] + 1)
        lens = np.array([len(prompts[i]) for i in rows], np.int32)
        if lens.sum() > budget:
            raise ValueError(f"prompt of {lens.sum()} tokens exceeds the prefill budget {budget}")
        step = StepInput(True, np.concatenate([prompts[i] for i in rows]).astype(np.int32), lens, lens.copy(),
                         tables[rows], (np.cumsum(lens) - 1).astype(np.int32),
                         SamplingBatch.from_rows([params] * len(rows), lens.tolist()))
        res = runner.step(step)
        for k, i in enumerate(rows):
            out[i].append(int(res.next_tokens[k]))
        r = rows[-1] + 1
    # decode until every sequence has its tokens (or EOS)
    while True:
        live = [i for i in range(len(prompts))
                if len(out[i]) < limits[i] and not (stop_at_eos and out[i][-1] == eos)]
        if not live:
            return
        ctx = np.array([len(prompts[i]) + len(out[i]) for i in live], np.int32)
        step = StepInput(False, np.array([out[i][-1] for i in live], np.int32), np.ones(len(live), np.int32), ctx,
                         tables[live], np.arange(len(live), dtype=np.int32),
                         SamplingBatch.from_rows([params] * len(live), ctx.tolist()))
        res = runner.step(step)
        for k, i in enumerate(live):
            out[i].append(int(res.next_tokens[k]))


def main() -> None:
    from .config import load_predict_config
    from .runner import runner_from_config

    parser = argparse.ArgumentParser(description="offline generation with the paged MindSpore model")
    parser.add_argument("--config", required=True, help="mindformers predict YAML")
    parser.add_argument("--prompt", action="append", required=True)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()
    pc = load_predict_config(args.config)
    tok = Tokenizer(pc.runtime.tokenizer)
    ids = [tok.encode(p) for p in args.prompt]
    longest = max(len(i) for i in ids) + args.max_new_tokens
    ladder = Ladder(decode_batches=(len(ids),), decode_blocks=(-(-longest // pc.runtime.block_size),),
                    prefill_tokens=(max(32, sum(len(i) for i in ids)),), prefill_context_factors=(1,))
    t0 = time.time()
    runner = runner_from_config(pc, ladder)
    runner.warmup()
    t1 = time.time()
    outs = generate(runner, ids, [args.max_new_tokens] * len(ids))
    t2 = time.time()
    for p, o in zip(args.prompt, outs):
        print(f"--- {p!r}\n{tok.decode(o)}")
    n = sum(len(o) for o in outs)
    print(f"[load + compile {t1 - t0:.1f} s; {n} tokens in {t2 - t1:.2f} s = {n / (t2 - t1):.0f} tok/s]")


if __name__ == "__main__":
    main()
