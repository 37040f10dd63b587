"""Decode and prefill step times of two RuntimeConfig settings in one process, the steps of the two
runners alternated (so both see the same host speed, which drifts by 10-30 % on this machine).

    .venv/bin/python experiments/2026-12-01-matmul-tiles/step_pair.py '{}' '{"small_matmul_rows": 128}' 8,16,32,64,128

Arguments: setting A and setting B as JSON objects of RuntimeConfig overrides, the decode batch
sizes. Steps as ../2026-12-01-fused-ops/step_variants.py (contexts uniform in [75, 225), one
prefill of 46 prompts x 22); REPS (default 12) alternated pairs per step, medians and minima.
"""
import dataclasses
import importlib
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "2026-12-01-decode-kernels"))
import step_ab as S  # noqa: E402
from msllama.checkpoint import load_weights  # noqa: E402
from msllama.config import load_predict_config  # noqa: E402
from msllama.runner import ModelRunner, StepInput  # noqa: E402
from msllama.sampling import SamplingBatch  # noqa: E402


def bench_weights() -> dict:
    return load_weights(S.CKPT, load_predict_config(S.PREDICT).model)


def bench_runner(batches: list[int], weights: dict, package: str = "msllama", **overrides) -> ModelRunner:
    """The bench model with decode graphs of `batches` rows and one 1024-token prefill graph, its
    RuntimeConfig changed by `overrides` (compile cache off: every runner compiles its own graphs).
    `package` names the msllama copy to build it from (another tree's, as ../2026-12-02-zen5/tree_pair.py)."""
    config = importlib.import_module(package + ".config")
    runner = importlib.import_module(package + ".runner")
    pc = config.load_predict_config(S.PREDICT)
    ladder = runner.Ladder(decode_batches=tuple(batches), decode_blocks=(S.WIDTH,), prefill_tokens=(1024,),
                           prefill_context_factors=(1,), prefill_min_rows=64)
    rt = dataclasses.replace(pc.runtime, num_blocks=S.BLOCKS, block_size=S.BS, compile_cache="", **overrides)
    return runner.ModelRunner(pc.model, rt, weights, ladder)


def steps(batches: list[int], rng: np.random.Generator) -> dict[str, StepInput]:
    out = {}
    for b in batches:
        lens = rng.integers(75, 225, b).astype(np.int32)
        out[f"decode B={b}"] = StepInput(False, rng.integers(3, 30000, b).astype(np.int32), np.ones(b, np.int32), lens,
                                         S.tables(lens, rng, 1), np.arange(b, dtype=np.int32), SamplingBatch.greedy(b))
    lens = np.full(46, 22, np.int32)
    out["prefill 46x22"] = StepInput(True, rng.integers(3, 30000, int(lens.sum())).astype(np.int32), lens, lens,
                                     S.tables(lens, rng, 0), (np.cumsum(lens) - 1).astype(np.int32),
                                     SamplingBatch.greedy(46))
    return out


def alternated(runners: list[ModelRunner], step: StepInput, reps: int) -> list[list[float]]:
    """ms of `reps` steps of each runner, the runners taking turns (so both see the same host speed)."""
    ts: list[list[float]] = [[] for _ in runners]
    for _ in range(reps):
        for i, r in enumerate(runners):
            ts[i].append(S.timed_ms(r, step))
    return ts


def main() -> int:
    settings = [json.loads(a) for a in sys.argv[1:3]]
    batches = [int(b) for b in sys.argv[3].split(",")]
    reps = int(os.environ.get("REPS", 12))
    weights = bench_weights()
    runners = [bench_runner(batches, weights, **o) for o in settings]
    print("A", settings[0], "B", settings[1])
    for name, step in steps(batches, np.random.default_rng(0)).items():
        for r in runners:
            S.timed_ms(r, step)
        ts = alternated(runners, step, reps)
        a, b = (float(np.median(t)) for t in ts)
        print(f"{name}: A {a:.1f} (min {min(ts[0]):.1f}) B {b:.1f} (min {min(ts[1]):.1f}) ms, A/B {a / b:.2f}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
