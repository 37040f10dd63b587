"""Decode and prefill step times of two trees' model code in one process, their steps alternated
(the host's speed drifts by 10-60 % between processes here): OLD (a tree's
mindformers/msllama, loaded as the package `msllama_old`; the package imports itself only
relatively) against this tree's msllama. Also checks that both give bitwise the same logits.

    git worktree add /tmp/old <rev>
    cd mindformers && REPS=20 ../.venv/bin/python ../experiments/2026-12-02-zen5/tree_pair.py /tmp/old 1,4,8

Steps, weights and ladder as ../2026-12-01-matmul-tiles/step_pair.py; medians of REPS (default
16) alternated pairs.
"""
import importlib.util
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "2026-12-01-matmul-tiles"))
sys.path.insert(0, os.path.join(HERE, "..", "2026-12-02-few-rows"))
import step_pair as P  # noqa: E402
from source_pair import compare  # noqa: E402


def load_old(tree: str):
    init = os.path.join(tree, "mindformers", "msllama", "__init__.py")
    spec = importlib.util.spec_from_file_location("msllama_old", init, submodule_search_locations=[os.path.dirname(init)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["msllama_old"] = module
    spec.loader.exec_module(module)
    return module


def main() -> int:
    load_old(sys.argv[1])
    batches = [int(b) for b in sys.argv[2].split(",")]
    reps = int(os.environ.get("REPS", 16))
    weights = P.bench_weights()
    runners = [P.bench_runner(batches, weights, package=p) for p in ("msllama_old", "msllama")]
    compare(runners, P.steps(batches, np.random.default_rng(0)), reps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
