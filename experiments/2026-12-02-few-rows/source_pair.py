"""Decode step times of two versions of one kernel in one process, their steps alternated (the
host's speed drifts by 10-30 % between runs): OLD (a copy of an older source of the kernel
KERNEL, default small_matmul) against the tree's kernels/KERNEL.cpp. Also checks that both give
bitwise the same logits.

    git show a02ef82:mindformers/msllama/kernels/small_matmul.cpp > /tmp/small_matmul_old.cpp
    cd mindformers && REPS=20 ../.venv/bin/python ../experiments/2026-12-02-few-rows/source_pair.py \
        /tmp/small_matmul_old.cpp 1,2,3,4,5,6,7,8 [KERNEL]

Steps as ../2026-12-01-matmul-tiles/step_pair.py (contexts uniform in [75, 225)); medians of
REPS (default 16) alternated pairs.
"""
import importlib
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "2026-12-01-matmul-tiles"))
sys.path.insert(0, str(HERE.parent / "2026-12-01-decode-kernels"))
import step_ab as S  # noqa: E402
import step_pair as P  # noqa: E402


def compare(runners: list, steps: dict, reps: int) -> None:
    """Print each step's median ms for the old and the new runner and whether their logits agree."""
    for name, step in steps.items():
        same = np.array_equal(*(r.step(step).next_logits for r in runners))
        a, b = (float(np.median(t)) for t in P.alternated(runners, step, reps))
        print(f"{name}: old {a:.1f} new {b:.1f} ms, old/new {a / b:.2f}; logits bitwise the same: {same}", flush=True)


def main() -> int:
    old, batches = Path(sys.argv[1]).resolve(), [int(b) for b in sys.argv[2].split(",")]
    kernel = importlib.import_module("msllama.kernels." + (sys.argv[3] if len(sys.argv) > 3 else "small_matmul"))
    reps = int(os.environ.get("REPS", 16))
    weights = P.bench_weights()
    runners = []
    for source in (old, kernel.SOURCE):
        kernel.SOURCE = source  # each source builds its own library (the name hashes the source)
        runners.append(P.bench_runner(batches, weights))
    compare(runners, {n: s for n, s in P.steps(batches, np.random.default_rng(0)).items() if n.startswith("decode")},
            reps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
