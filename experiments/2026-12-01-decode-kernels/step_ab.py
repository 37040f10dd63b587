"""Decode and prefill step time of ModelRunner.step on the bench model, for A/B runs of two trees.

    .venv/bin/python experiments/2026-12-01-decode-kernels/step_ab.py --label new --json new-1.json
    PYTHONPATH=/tmp/old/mindformers .venv/bin/python experiments/2026-12-01-decode-kernels/step_ab.py \
        --label old --json old-1.json        # a worktree of the previous commit (PYTHONPATH wins over .pth)
    .venv/bin/python experiments/2026-12-01-decode-kernels/step_ab.py --plot plot.png old-*.json new-*.json

The runner is built with the bench predict config (its runtime defaults: cpu_paged attention and,
in trees that have it, small_matmul_rows auto) and a 4096-block cache. Decode: B sequences with
contexts uniform in [ctx/2, 3 ctx/2), blocks scattered over the cache; prefill: one 1024-token
step of many short prompts, of 8 x 128, and of one 1000-token prompt. Reports the median and the
minimum of 20 (decode) or 8 (prefill) steps after one untimed step; cache contents are whatever
earlier steps wrote (timing only).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import numpy as np

import msllama
from msllama.checkpoint import load_weights
from msllama.config import load_predict_config
from msllama.runner import Ladder, ModelRunner, StepInput
from msllama.sampling import SamplingBatch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from step_latency import timed_ms  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PREDICT = os.path.join(ROOT, "mindformers", "configs", "llama2", "predict_llama2_bench.yaml")
CKPT = os.path.join(ROOT, ".cache", "bench", "llama2_bench.ckpt")
BS, BLOCKS, WIDTH = 16, 4096, 64
PREFILLS = {"46 prompts x 22": [22] * 46, "8 prompts x 128": [128] * 8, "1 prompt x 1000": [1000]}


def timed(runner: ModelRunner, step: StepInput, repeats: int) -> dict[str, float]:
    timed_ms(runner, step)
    ts = [timed_ms(runner, step) for _ in range(repeats)]
    return {"median_ms": float(np.median(ts)), "min_ms": float(min(ts))}


def tables(lens: np.ndarray, rng: np.random.Generator, spare: int) -> np.ndarray:
    free = rng.permutation(np.arange(1, BLOCKS))
    out = np.zeros((len(lens), WIDTH), np.int32)
    k = 0
    for b, n in enumerate(lens):
        need = -(-(int(n) + spare) // BS)
        out[b, :need] = free[k:k + need]
        k += need
    return out


def plot(paths: list[str], out: str) -> None:
    """Bars of each label's step medians (every run of a label as a dot), before/after side by side."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs: dict[str, list[dict]] = {}
    for path in paths:
        with open(path, encoding="utf-8") as f:
            r = json.load(f)
        runs.setdefault(r["label"], []).append(r)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [2, 1]})
    for ax, kind, title in ((axes[0], "decode", "decode step, ctx ~150 (ms)"), (axes[1], "prefill", "1024-token prefill step (ms)")):
        keys = list(next(iter(runs.values()))[0][kind])
        width = 0.8 / len(runs)
        for i, (label, rs) in enumerate(runs.items()):
            xs = np.arange(len(keys)) + (i - (len(runs) - 1) / 2) * width
            medians = np.array([[r[kind][k]["median_ms"] for k in keys] for r in rs])
            ax.bar(xs, medians.mean(0), width, label=label)
            for row in medians:
                ax.plot(xs, row, "k.", markersize=4)
        ax.set_xticks(np.arange(len(keys)), [f"B={k}" if kind == "decode" else k for k in keys], fontsize=8)
        ax.set_yscale("log" if kind == "decode" else "linear")
        ax.set_title(title)
        ax.legend()
    fig.suptitle("ModelRunner.step on the bench model: mean of the runs' medians (dots: each run)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--plot", nargs="+", metavar=("OUT.png", "RUN.json"),
                   help="draw OUT.png from result files instead of measuring")
    p.add_argument("--label", help="name of this tree in the results (required unless --plot)")
    p.add_argument("--batches", default="1,4,8,16,64,256")
    p.add_argument("--ctx", type=int, default=150)
    p.add_argument("--json", help="result file to write (required unless --plot)")
    args = p.parse_args()
    if args.plot:
        plot(args.plot[1:], args.plot[0])
        return 0
    if not args.label or not args.json:
        p.error("--label and --json are required to measure")
    batches = tuple(int(b) for b in args.batches.split(","))
    pc = load_predict_config(PREDICT)
    rt = dataclasses.replace(pc.runtime, num_blocks=BLOCKS, block_size=BS, compile_cache="")
    ladder = Ladder(decode_batches=batches, decode_blocks=(WIDTH,), prefill_tokens=(1024,),
                    prefill_context_factors=(1,), prefill_min_rows=64)
    runner = ModelRunner(pc.model, rt, load_weights(CKPT, pc.model), ladder)
    rng = np.random.default_rng(0)
    result = {"label": args.label, "msllama": msllama.__file__, "runtime": repr(runner.rt), "decode": {},
              "prefill": {}}
    for b in batches:
        lens = rng.integers(args.ctx // 2, args.ctx * 3 // 2, b).astype(np.int32)
        step = StepInput(False, rng.integers(3, 30000, b).astype(np.int32), np.ones(b, np.int32), lens,
                         tables(lens, rng, 1), np.arange(b, dtype=np.int32), SamplingBatch.greedy(b))
        result["decode"][b] = timed(runner, step, 20)
        print(f"{args.label} decode B={b} ctx~{args.ctx}: {result['decode'][b]}", flush=True)
    for name, lens in PREFILLS.items():
        lens = np.array(lens, np.int32)
        last = (np.cumsum(lens) - 1).astype(np.int32)
        step = StepInput(True, rng.integers(3, 30000, int(lens.sum())).astype(np.int32), lens, lens,
                         tables(lens, rng, 0), last, SamplingBatch.greedy(len(lens)))
        result["prefill"][name] = timed(runner, step, 8)
        print(f"{args.label} prefill {name}: {result['prefill'][name]}", flush=True)
    with open(args.json, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
