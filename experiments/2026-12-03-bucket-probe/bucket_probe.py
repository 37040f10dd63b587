"""Decode step times of several batch sizes on one runner with the given batch buckets, the steps
taken in turn (so every size sees the same host speed): does a bucket cost more than its rows say?

    cd mindformers && ../.venv/bin/python ../experiments/2026-12-03-bucket-probe/bucket_probe.py 128,160,192 120,128,140,154,160,176,192

Arguments: the runner's decode buckets, the batch sizes to time (each padded to the smallest bucket
that holds it). CTX (default "50,70") bounds the uniform random contexts, REPS (default 9) the timed
rounds after one untimed; the runner is ../2026-12-01-matmul-tiles/step_pair.py's bench runner.
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "2026-12-01-matmul-tiles"))
from step_pair import S, bench_runner, bench_weights  # noqa: E402

from msllama.runner import StepInput  # noqa: E402
from msllama.sampling import SamplingBatch  # noqa: E402


def decode_step(b: int, lo: int, hi: int, rng: np.random.Generator) -> StepInput:
    lens = rng.integers(lo, hi, b).astype(np.int32)
    return StepInput(False, rng.integers(3, 30000, b).astype(np.int32), np.ones(b, np.int32), lens,
                     S.tables(lens, rng, 1), np.arange(b, dtype=np.int32), SamplingBatch.greedy(b))


def main() -> int:
    buckets = [int(x) for x in sys.argv[1].split(",")]
    batches = [int(x) for x in sys.argv[2].split(",")]
    lo, hi = (int(x) for x in os.environ.get("CTX", "50,70").split(","))
    reps = int(os.environ.get("REPS", 9))
    runner = bench_runner(buckets, bench_weights())
    rng = np.random.default_rng(0)
    steps = {b: decode_step(b, lo, hi, rng) for b in batches}
    for step in steps.values():
        S.timed_ms(runner, step)
    ts: dict[int, list[float]] = {b: [] for b in batches}
    for _ in range(reps):
        for b, step in steps.items():
            ts[b].append(S.timed_ms(runner, step))
    for b, t in ts.items():
        bucket = min(x for x in buckets if x >= b)
        print(f"B={b} bucket {bucket}: median {np.median(t):.1f} min {min(t):.1f} ms ({np.median(t) / bucket * 1e3:.0f} us a bucket row)",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
