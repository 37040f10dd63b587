"""Decode and prefill step times of ModelRunner.step on the bench model under runtime overrides,
for A/B runs of kernel settings (one process per setting; alternate the runs).

    .venv/bin/python experiments/2026-12-01-fused-ops/step_variants.py --set fused_pointwise_rows=0 --json a.json
    .venv/bin/python experiments/2026-12-01-fused-ops/step_variants.py --set fused_pointwise_rows=1024 --json b.json
    PYTHONPATH=/tmp/old/mindformers .venv/bin/python experiments/2026-12-01-fused-ops/step_variants.py --json old.json

The steps are those of ../2026-12-01-decode-kernels/step_ab.py (its helpers are imported): B
sequences with contexts uniform in [75, 225), blocks scattered over a 4096-block cache, and one
1024-token prefill of 46 prompts x 22. Median and minimum of 24 decode / 16 prefill steps.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "2026-12-01-decode-kernels"))
import step_ab as S  # noqa: E402
from msllama.checkpoint import load_weights  # noqa: E402
from msllama.config import load_predict_config  # noqa: E402
from msllama.runner import Ladder, ModelRunner, StepInput  # noqa: E402
from msllama.sampling import SamplingBatch  # noqa: E402


def timed(runner: ModelRunner, step: StepInput, repeats: int) -> dict[str, float]:
    S.timed_ms(runner, step)
    ts = [S.timed_ms(runner, step) for _ in range(repeats)]
    return {"median_ms": float(np.median(ts)), "min_ms": float(min(ts))}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--set", action="append", default=[], metavar="KEY=INT", help="RuntimeConfig override")
    p.add_argument("--batches", default="1,4,8,16,64,128,256")
    p.add_argument("--json", required=True)
    args = p.parse_args()
    overrides = {k: int(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    batches = tuple(int(b) for b in args.batches.split(","))
    pc = load_predict_config(S.PREDICT)
    rt = dataclasses.replace(pc.runtime, num_blocks=S.BLOCKS, block_size=S.BS, compile_cache="", **overrides)
    ladder = Ladder(decode_batches=batches, decode_blocks=(S.WIDTH,), prefill_tokens=(1024,),
                    prefill_context_factors=(1,), prefill_min_rows=64)
    runner = ModelRunner(pc.model, rt, load_weights(S.CKPT, pc.model), ladder)
    rng = np.random.default_rng(0)
    result = {"set": overrides, "msllama": sys.modules["msllama"].__file__, "runtime": repr(runner.rt), "decode": {}}
    for b in batches:
        lens = rng.integers(75, 225, b).astype(np.int32)
        step = StepInput(False, rng.integers(3, 30000, b).astype(np.int32), np.ones(b, np.int32), lens,
                         S.tables(lens, rng, 1), np.arange(b, dtype=np.int32), SamplingBatch.greedy(b))
        result["decode"][b] = timed(runner, step, 24)
    lens = np.full(46, 22, np.int32)
    step = StepInput(True, rng.integers(3, 30000, int(lens.sum())).astype(np.int32), lens, lens,
                     S.tables(lens, rng, 0), (np.cumsum(lens) - 1).astype(np.int32), SamplingBatch.greedy(46))
    result["prefill_46x22"] = timed(runner, step, 16)
    print(overrides or "defaults", " ".join(f"B={b}: {r['median_ms']:.1f}/{r['min_ms']:.1f}"
                                            for b, r in result["decode"].items()),
          f"prefill: {result['prefill_46x22']['median_ms']:.1f}/{result['prefill_46x22']['min_ms']:.1f} (median/min ms)")
    with open(args.json, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
