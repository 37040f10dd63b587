"""Decode-step latency of the CPU paged-attention kernel against the basic-op attention.

One model is built with `attention_kernel: cpu_paged`; a second `DecodeStep(use_kernel=False)`
over the same weights and cache gives the basic-op graph, so both variants run in the same
process on identical inputs, their rounds interleaved (the machine is shared: a pair measured
minutes apart would compare two machine speeds). Contexts are either uniform (every sequence at
L = the bucket) or a served-batch mix (one sequence at L, the others 60-150 tokens).

Each (model, batch) pair runs in its own subprocess sized for that batch; `--threads` runs the
whole grid once per thread count given to the kernel (MSLLAMA_KERNEL_THREADS).

    .venv/bin/python experiments/2026-11-22-paged-attention-kernel/kernel_latency.py \
        --out experiments/2026-11-22-paged-attention-kernel
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from step_latency import (BLOCK_SIZE, AGREE, CpuMeter, Point, progress, timed_ms, exact_ladder,  # noqa: E402
                          machine, model_configs, step_input)

BATCHES = (1, 16, 64, 128)
BUCKETS = (128, 512, 1024)
MIXES = ("uniform", "mixed")
SHORT_CONTEXT = (60, 150)  # the other sequences of a mixed batch
VARIANTS = ("basic", "kernel")
MAX_ROUNDS = 5
ROUND_SECONDS = 0.6
REPS_RANGE = (3, 20)


@dataclass(frozen=True)
class Case:
    batch: int
    bucket: int
    mix: str

    def label(self) -> str:
        return f"B={self.batch} L={self.bucket} {self.mix}"


def cases(batch: int) -> list[Case]:
    mixes = MIXES if batch > 1 else ("uniform",)  # one sequence: the mix is the uniform case
    return [Case(batch, bucket, mix) for bucket in BUCKETS for mix in mixes]


def context_lens(case: Case, rng: np.random.Generator) -> np.ndarray:
    lens = np.full(case.batch, case.bucket, np.int32)
    if case.mix == "mixed":
        lo, hi = SHORT_CONTEXT
        lens[1:] = np.minimum(rng.integers(lo, hi + 1, case.batch - 1), case.bucket)
    return lens


# ---- worker: one (model, batch) pair --------------------------------------------------------

def run_worker(model: str, batch: int) -> None:
    from msllama.config import RuntimeConfig
    from msllama.model import DecodeStep
    from msllama.runner import ModelRunner
    from msllama.weights import random_weights

    cfg = model_configs()[model]
    rt = RuntimeConfig(block_size=BLOCK_SIZE, num_blocks=1 + batch * max(BUCKETS) // BLOCK_SIZE,
                       attention_kernel="cpu_paged")
    grid = cases(batch)
    runner = ModelRunner(cfg, rt, random_weights(cfg), exact_ladder(Point("decode", batch, BUCKETS[0])))
    steps = {"kernel": runner.decode_step, "basic": DecodeStep(runner.model, use_kernel=False)}
    rng, meter = np.random.default_rng(batch), CpuMeter()
    inputs, reps, first_ms = {}, {}, {}
    for case in grid:
        s = step_input(Point("decode", case.batch, case.bucket), cfg.vocab_size, rng)
        s.context_lens = context_lens(case, rng)
        inputs[case] = s
        runner.ladder = exact_ladder(Point("decode", case.batch, case.bucket))
        for variant in VARIANTS:
            runner.decode_step = steps[variant]
            first_ms[case, variant] = timed_ms(runner, s)  # compiles the shape
            probe = timed_ms(runner, s)
            reps[case, variant] = int(np.clip(ROUND_SECONDS * 1e3 / probe, *REPS_RANGE))
    rounds: dict[tuple[Case, str], list[tuple[float, float]]] = {(c, v): [] for c in grid for v in VARIANTS}

    def settled(key) -> bool:
        medians = sorted(m for m, _ in rounds[key])
        return len(medians) >= 2 and medians[1] <= (1 + AGREE) * medians[0]

    for _ in range(MAX_ROUNDS):
        for case in grid:
            if all(settled((case, v)) for v in VARIANTS):
                continue
            runner.ladder = exact_ladder(Point("decode", case.batch, case.bucket))
            for variant in VARIANTS:  # alternate, so both see the same machine
                runner.decode_step = steps[variant]
                meter.wait_for_quiet()
                times = [timed_ms(runner, inputs[case]) for _ in range(reps[case, variant])]
                rounds[case, variant].append((float(np.median(times)), round(meter.others(), 2)))
    for case in grid:
        for variant in VARIANTS:
            key = (case, variant)
            best, others = min(rounds[key])
            ctx = inputs[case].context_lens
            print(json.dumps({"model": model, "threads": os.environ.get("MSLLAMA_KERNEL_THREADS", "default"),
                              **dataclasses.asdict(case), "variant": variant, "ms": round(best, 3),
                              "tokens_per_s": round(case.batch * 1e3 / best, 1),
                              "round_ms": [round(m, 3) for m, _ in rounds[key]], "other_cores": others,
                              "settled": settled(key), "first_call_ms": round(first_ms[key], 1),
                              "mean_context": round(float(ctx.mean()), 1)}), flush=True)
    progress(f"[{model} B={batch} threads={os.environ.get('MSLLAMA_KERNEL_THREADS', 'default')}] done, "
              f"quiet wait {meter.waited_s:.0f} s")


# ---- driver -----------------------------------------------------------------------------------

def run_all(models: list[str], batches: list[int], threads: list[str]) -> tuple[list[dict], list[dict]]:
    records, failures = [], []
    for n in threads:
        env = dict(os.environ)
        if n != "default":
            env["MSLLAMA_KERNEL_THREADS"] = n
        for model in models:
            for batch in batches:
                progress(f"[{model} B={batch} threads={n}] start")
                proc = subprocess.run([sys.executable, __file__, "--worker", model, str(batch)],
                                      stdout=subprocess.PIPE, text=True, env=env)
                records += [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
                if proc.returncode != 0:
                    failures.append({"model": model, "batch": batch, "threads": n, "returncode": proc.returncode})
    return records, failures


def pair_key(r: dict) -> tuple:
    return r["model"], r["threads"], r["batch"], r["bucket"], r["mix"]


def calmest_pairs(records: list[dict]) -> list[dict]:
    """With records of several runs (`run` field), per point the basic/kernel pair of the run
    whose two measurements saw the fewest other busy cores: chosen by disturbance, not result."""
    pairs: dict[tuple, dict[str, list[dict]]] = {}
    for r in records:
        pairs.setdefault(pair_key(r), {}).setdefault(r.get("run", ""), []).append(r)
    return [r for runs in pairs.values()
            for r in min(runs.values(), key=lambda pair: max(x["other_cores"] for x in pair))]


def combine(paths: list[Path], out: Path) -> None:
    """One results.json from several runs of this script, each record tagged with its run."""
    runs = [json.loads(p.read_text()) for p in paths]
    records = [{**r, "run": run["meta"]["date"]} for run in runs for r in run["records"]]
    meta = {"runs": [run["meta"] for run in runs],
            "selection": "tables and plot: per point the pair of the run least disturbed (calmest_pairs)"}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"meta": meta, "records": records}, indent=1) + "\n")
    plot(records, out / "plot.png")


def plot(records: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    records = calmest_pairs(records)
    panels = sorted({(r["model"], r["threads"]) for r in records}, key=lambda p: (p[0], p[1] != "default", p[1]))
    fig, axes = plt.subplots(len(panels), 2, figsize=(13, 4.5 * len(panels)), squeeze=False)
    colors = dict(zip(BUCKETS, plt.cm.viridis(np.linspace(0, 0.85, len(BUCKETS)))))
    for row, (model, threads) in zip(axes, panels):
        for ax, mix in zip(row, MIXES):
            for bucket in BUCKETS:
                for variant, style in (("basic", "--"), ("kernel", "-")):
                    pts = sorted((r["batch"], r["ms"]) for r in records
                                 if (r["model"], r["threads"], r["bucket"], r["variant"]) ==
                                 (model, threads, bucket, variant) and (r["mix"] == mix or r["batch"] == 1))
                    if pts:
                        ax.plot(*zip(*pts), style, marker="o", ms=3, color=colors[bucket],
                                label=f"{variant} L={bucket}")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if str(v)[0] in "25" else ""))
            ax.set_xticks(BATCHES, [str(b) for b in BATCHES])
            ax.set_xlabel("decode batch B")
            ax.set_ylabel("decode step ms (lower is better)")
            what = "every context = L" if mix == "uniform" else "one context = L, others 60-150"
            ax.set_title(f"{model}, kernel threads {threads}: {what}")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7, ncol=2)
    fig.suptitle("Decode step, fp32 GRAPH_MODE on CPU: basic-op attention (dashed) vs cpu_paged kernel (solid)")
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, help="folder for results.json and plot.png")
    ap.add_argument("--models", nargs="+", choices=["debug", "bench"], default=["bench", "debug"])
    ap.add_argument("--batches", nargs="+", type=int, default=list(BATCHES))
    ap.add_argument("--threads", nargs="+", default=["default"],
                    help="MSLLAMA_KERNEL_THREADS values ('default' leaves it unset: all usable CPUs)")
    ap.add_argument("--replot", action="store_true", help="redraw plot.png from --out/results.json")
    ap.add_argument("--combine", nargs="+", type=Path, metavar="RESULTS_JSON",
                    help="merge the results.json of several runs into --out")
    ap.add_argument("--worker", nargs=2, metavar=("MODEL", "BATCH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        run_worker(args.worker[0], int(args.worker[1]))
        return
    if args.out is None:
        ap.error("argument --out: required")
    results = args.out / "results.json"
    if args.combine:
        combine(args.combine, args.out)
        return
    if args.replot:
        plot(json.loads(results.read_text())["records"], args.out / "plot.png")
        return
    start, load_before = time.time(), os.getloadavg()
    records, failures = run_all(args.models, args.batches, args.threads)
    from msllama.kernels.paged_attention import library

    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "command": " ".join(sys.argv), "machine": machine(),
            "kernel_library": library().path.name,
            "load_before": [round(x, 2) for x in load_before],
            "load_after": [round(x, 2) for x in os.getloadavg()], "seconds": round(time.time() - start, 1),
            "block_size": BLOCK_SIZE, "short_context": SHORT_CONTEXT, "failures": failures}
    args.out.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps({"meta": meta, "records": records}, indent=1) + "\n")
    plot(records, args.out / "plot.png")
    progress(f"{len(records)} records in {results}, {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
