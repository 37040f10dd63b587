"""The bench trace's model time on two trees in one process, their steps alternated: a served run
on this host moves by 10-20 % from run to run, more than a kernel change of a few per cent, so this
replays the trace's step shapes instead. OLD is a tree's mindformers/msllama (loaded as
`msllama_old`, as ../2026-12-02-zen5/tree_pair.py), NEW this tree's.

    git worktree add /tmp/old <rev>
    cd mindformers && ../.venv/bin/python ../experiments/2026-12-03-matmul-fetch/trace_pair.py /tmp/old

The schedule is the trace's when every request starts at once (as ../physical_limit.py counts it):
decode step s holds the requests with more than s output tokens, each at context prompt + s,
padded to the tuned config's batch buckets; the prompts go in prefill steps of at most 1024 tokens
and 64 prompts. Every STRIDE-th decode step (default 8) and every prefill step run REPS times
(default 3) per tree, alternated; a step's median times STRIDE stands for its neighbours. Prints the
estimated decode and prefill model seconds of both trees and whether their logits agree.
"""
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(HERE, "..", "2026-12-02-zen5"))
sys.path.insert(0, os.path.join(HERE, "..", "2026-12-01-matmul-tiles"))
import step_pair as P  # noqa: E402
from physical_limit import DEFAULT_DATASET, DEFAULT_TOKENIZER, judge_trace  # noqa: E402
from tree_pair import load_old  # noqa: E402

from msllama.runner import StepInput  # noqa: E402
from msllama.sampling import SamplingBatch  # noqa: E402

BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 288, 320)  # llama_bench_tuned.yaml
PREFILL_TOKENS, PREFILL_ROWS = 1024, 64


def trace_steps(prompts: np.ndarray, outputs: np.ndarray, stride: int, rng: np.random.Generator):
    """[(name, weight, StepInput)]: the sampled decode steps (weight = steps they stand for) and
    every prefill step (weight 1)."""
    out = []
    start = 0
    while start < len(prompts):  # prefill: prompts in order, packed up to the step's limits
        end = start
        while end < len(prompts) and end - start < PREFILL_ROWS and prompts[start:end + 1].sum() <= PREFILL_TOKENS:
            end += 1
        lens = prompts[start:end].astype(np.int32)
        out.append((f"prefill {end - start} prompts", 1, StepInput(
            True, rng.integers(3, 30000, int(lens.sum())).astype(np.int32), lens, lens, P.S.tables(lens, rng, 0),
            (np.cumsum(lens) - 1).astype(np.int32), SamplingBatch.greedy(len(lens)))))
        start = end
    last = int(outputs.max())
    for s in range(1, last, stride):
        lens = (prompts[outputs > s] + s).astype(np.int32)
        b = len(lens)
        out.append((f"decode step {s} B={b}", min(stride, last - s), StepInput(
            False, rng.integers(3, 30000, b).astype(np.int32), np.ones(b, np.int32), lens, P.S.tables(lens, rng, 1),
            np.arange(b, dtype=np.int32), SamplingBatch.greedy(b))))
    return out


def main() -> int:
    load_old(sys.argv[1])
    stride, reps = int(os.environ.get("STRIDE", 8)), int(os.environ.get("REPS", 3))
    trace = judge_trace(DEFAULT_DATASET, DEFAULT_TOKENIZER, 300, qps=1.0)
    prompts = np.array([r.input_tokens for r in trace])
    outputs = np.array([r.max_new_tokens for r in trace])
    steps = trace_steps(prompts, outputs, stride, np.random.default_rng(0))
    used = sorted({next(b for b in BUCKETS if b >= len(st.token_ids)) for _, _, st in steps if not st.is_prefill})
    weights = P.bench_weights()
    print(f"{len(trace)} requests, {prompts.sum()} prompt + {outputs.sum()} output tokens; {len(steps)} steps "
          f"sampled; compiling decode buckets {used} for both trees ...", flush=True)
    runners = [P.bench_runner(used, weights, package=p) for p in ("msllama_old", "msllama")]
    totals = {"decode": [0.0, 0.0], "prefill": [0.0, 0.0]}
    same = True
    for name, weight, step in steps:
        same &= np.array_equal(*(r.step(step).next_logits for r in runners))
        old, new = (float(np.median(t)) for t in P.alternated(runners, step, reps))
        kind = "prefill" if step.is_prefill else "decode"
        totals[kind][0] += weight * old / 1e3
        totals[kind][1] += weight * new / 1e3
        print(f"{name}: old {old:.1f} new {new:.1f} ms (x{weight})", flush=True)
    for kind, (old, new) in totals.items():
        print(f"{kind}: old {old:.2f} s, new {new:.2f} s, old/new {old / new:.3f}")
    print(f"logits bitwise the same in every step: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
