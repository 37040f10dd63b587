"""Per-step latency of `msllama.runner.ModelRunner.step` on CPU: prefill and decode grids, two
model shapes, GRAPH_MODE and PyNative (asynchronous and synchronous).

Every (model, mode) pair runs in its own subprocess, so compiled graphs, their activation memory
and the MindSpore context never leak from one pair into the next. Steps are built the way the
engine builds them (flattened prompts, distinct blocks per sequence, greedy sampling of each
prompt's last token) and sized exactly to a compiled shape, so no padding is measured.

    .venv/bin/python experiments/step_latency.py --out experiments/2026-11-22-step-latency
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np

from msllama.config import LlamaConfig, load_predict_config
from msllama.runner import Ladder, ModelRunner, StepInput
from msllama.sampling import SamplingBatch

ROOT = Path(__file__).resolve().parents[1]
DEBUG_YAML = ROOT / "mindformers/configs/llama2/predict_llama2_7b_debug.yaml"
BLOCK_SIZE = 16

# mode name -> (MindSpore mode, pynative_synchronize)
MODES = {"graph": (0, False), "pynative": (1, False), "pynative_sync": (1, True)}

PREFILL_TOKENS = (16, 32, 64, 128, 256, 512)
PREFILL_BATCHES = (1, 4, 16)
DECODE_BATCHES = (1, 4, 16, 64)
DECODE_CONTEXTS = (64, 128, 256, 512, 1024)
# PyNative costs 0.1-1 s per step: a corner-and-middle subset of the grid keeps the run short.
PYNATIVE_PREFILL = ((1, 32), (1, 128), (1, 512), (4, 128), (16, 128), (16, 512))
PYNATIVE_DECODE = tuple((b, ctx) for b in DECODE_BATCHES for ctx in (128, 1024))

# The machine is shared and its speed drifts by 2-3x between rounds even when no other
# process runs (a VM on a busy host). So a round starts once other processes use less than
# QUIET_CORES (waiting at most QUIET_WAIT_S per round and QUIET_BUDGET_S per process, so a busy
# machine cannot stall the run), every point is measured in passes over the whole grid, and a
# point is settled once its two fastest rounds agree within AGREE and the fastest was quiet.
QUIET_CORES = 0.3
QUIET_WAIT_S = 20.0
QUIET_BUDGET_S = 60.0
AGREE = 0.15
MAX_ROUNDS = 5
ROUND_SECONDS = {"graph": 1.0, "pynative": 2.0, "pynative_sync": 2.0}
REPS_RANGE = {"graph": (5, 30), "pynative": (3, 10), "pynative_sync": (3, 10)}


def model_configs() -> dict[str, LlamaConfig]:
    debug = load_predict_config(str(DEBUG_YAML)).model
    # llama2.c's "42M" shape (58 M parameters with an untied head), the llama.cpp peer's model
    bench = LlamaConfig(vocab_size=32000, hidden_size=512, num_layers=8, num_heads=8, n_kv_heads=8,
                        intermediate_size=1376, seq_length=1024)
    return {"debug": debug, "bench": bench}


@dataclass(frozen=True)
class Point:
    kind: str   # prefill | decode
    batch: int  # B prompts (prefill) or sequences (decode)
    size: int   # T total new tokens (prefill) or context length L (decode)

    def label(self) -> str:
        return f"{self.kind} B={self.batch} {'T' if self.kind == 'prefill' else 'L'}={self.size}"


def grid(mode: str) -> list[Point]:
    if mode == "graph":
        prefill = [(b, t) for b in PREFILL_BATCHES for t in PREFILL_TOKENS if t // b >= 2]
        decode = [(b, ctx) for b in DECODE_BATCHES for ctx in DECODE_CONTEXTS]
    else:
        prefill, decode = list(PYNATIVE_PREFILL), list(PYNATIVE_DECODE)
    return [Point("prefill", b, t) for b, t in prefill] + [Point("decode", b, ctx) for b, ctx in decode]


def _distinct_tables(batch: int, width: int) -> np.ndarray:
    """Block tables of `batch` sequences, `width` blocks each, no block shared (block 0 = trash)."""
    return (1 + np.arange(batch * width, dtype=np.int32)).reshape(batch, width)


def _blocks(tokens: int) -> int:
    return -(-tokens // BLOCK_SIZE)


def step_input(p: Point, vocab: int, rng: np.random.Generator) -> StepInput:
    if p.kind == "prefill":
        lens = np.full(p.batch, p.size // p.batch, np.int32)
        tokens = rng.integers(3, vocab, int(lens.sum()), dtype=np.int32)
        return StepInput(is_prefill=True, token_ids=tokens, seq_lens=lens, context_lens=lens,
                         block_tables=_distinct_tables(p.batch, _blocks(int(lens[0]))),
                         sample_rows=(np.cumsum(lens) - 1).astype(np.int32),
                         sampling=SamplingBatch.greedy(p.batch))
    return StepInput(is_prefill=False, token_ids=rng.integers(3, vocab, p.batch, dtype=np.int32),
                     seq_lens=np.ones(p.batch, np.int32), context_lens=np.full(p.batch, p.size, np.int32),
                     block_tables=_distinct_tables(p.batch, _blocks(p.size)),
                     sample_rows=np.arange(p.batch, dtype=np.int32), sampling=SamplingBatch.greedy(p.batch))


def exact_ladder(p: Point) -> Ladder:
    """A ladder whose shape for this point is the point itself: T new tokens, C = T keys and
    B logits rows (prefill), or B sequences of L / block_size blocks (decode)."""
    if p.kind == "prefill":
        return Ladder(prefill_tokens=(p.size,), prefill_context_factors=(1,),
                      prefill_rows_per_token=0.0, prefill_min_rows=p.batch)
    return Ladder(decode_batches=(p.batch,), decode_blocks=(_blocks(p.size),))


def num_blocks_for(points: list[Point]) -> int:
    widest = max(p.batch * _blocks(p.size if p.kind == "decode" else p.size // p.batch) for p in points)
    return 1 + widest


# ---- worker: one (model, mode) pair in this process ------------------------------------------

def timed_ms(runner: ModelRunner, s: StepInput) -> float:
    start = time.perf_counter()
    runner.step(s)
    return (time.perf_counter() - start) * 1e3


@dataclass
class Series:
    """Timings of one point: rounds of `reps` steps, taken at different moments of the run."""
    point: Point
    step: StepInput
    first_ms: float     # the first call; in GRAPH_MODE it compiles the shape
    reps: int
    rounds: list[np.ndarray] = dataclasses.field(default_factory=list)
    others: list[float] = dataclasses.field(default_factory=list)  # other processes' cores per round

    def calmest_index(self) -> int:
        # Interference from other work on the machine only adds time: the lowest median is the
        # round least disturbed.
        return int(np.argmin([np.median(r) for r in self.rounds]))

    def calmest(self) -> np.ndarray:
        return self.rounds[self.calmest_index()]

    def iqr_fraction(self) -> float:
        q25, q50, q75 = np.percentile(self.calmest(), [25, 50, 75])
        return float((q75 - q25) / q50)

    def settled(self) -> bool:
        medians = sorted(float(np.median(r)) for r in self.rounds)
        return (len(medians) >= 2 and medians[1] <= (1 + AGREE) * medians[0]
                and self.others[self.calmest_index()] <= QUIET_CORES)

    def record(self, mode: str) -> dict:
        p, best = self.point, self.calmest()
        ms = float(np.median(best))
        return {
            "kind": p.kind, "B": p.batch, "T": p.size if p.kind == "prefill" else None,
            "L": p.size if p.kind == "decode" else None, "ms": round(ms, 3),
            "tokens_per_s": round((p.size if p.kind == "prefill" else p.batch) * 1e3 / ms, 1),
            "ms_min": round(float(best.min()), 3), "iqr_pct": round(100 * self.iqr_fraction(), 1),
            "reps": self.reps, "round_ms": [round(float(np.median(r)), 3) for r in self.rounds],
            "first_call_ms": round(self.first_ms, 1),
            "compile_s": round((self.first_ms - ms) / 1e3, 2) if mode == "graph" else None,
            "other_cores": self.others[self.calmest_index()], "settled": self.settled(),
        }


def start_series(runner: ModelRunner, p: Point, mode: str, rng: np.random.Generator) -> Series:
    runner.ladder = exact_ladder(p)
    s = step_input(p, runner.cfg.vocab_size, rng)
    first_ms = timed_ms(runner, s)
    probe_ms = timed_ms(runner, s)
    lo, hi = REPS_RANGE[mode]
    return Series(p, s, first_ms, int(np.clip(ROUND_SECONDS[mode] * 1e3 / probe_ms, lo, hi)))


class CpuMeter:
    """CPU cores used by other processes between two calls: busy ticks of the machine
    (/proc/stat, steal included) minus this process's own ticks (all its threads)."""

    def __init__(self) -> None:
        self._ticks_per_s = os.sysconf("SC_CLK_TCK")
        self._last = self._sample()
        self.waited_s = 0.0

    @staticmethod
    def _sample() -> tuple[float, int, int]:
        with open("/proc/stat") as f:
            cpu = [int(x) for x in f.readline().split()[1:9]]
        with open("/proc/self/stat") as f:
            own = f.read().rsplit(")", 1)[1].split()  # utime, stime are fields 14, 15
        busy = sum(cpu) - cpu[3] - cpu[4]  # minus idle and iowait
        return time.monotonic(), busy, int(own[11]) + int(own[12])

    def others(self) -> float:
        now = self._sample()
        wall, busy, own = (n - l for n, l in zip(now, self._last))
        self._last = now
        return max(0.0, (busy - own) / self._ticks_per_s / max(wall, 1e-3))

    def wait_for_quiet(self) -> None:
        start = time.monotonic()
        limit = start + min(QUIET_WAIT_S, max(0.0, QUIET_BUDGET_S - self.waited_s))
        self.others()
        while True:
            time.sleep(0.25)
            if self.others() < QUIET_CORES or time.monotonic() > limit:
                self.waited_s += time.monotonic() - start
                self.others()  # the round is measured from here
                return


def add_round(runner: ModelRunner, series: Series, meter: CpuMeter) -> None:
    # The Cells stay across ladders, so graphs compiled for earlier points are still there.
    runner.ladder = exact_ladder(series.point)
    meter.wait_for_quiet()
    series.rounds.append(np.array([timed_ms(runner, series.step) for _ in range(series.reps)]))
    series.others.append(round(meter.others(), 2))


def run_worker(model: str, mode: str) -> None:
    """Measure the grid of one (model, mode) pair; one JSON record per line on stdout.

    The first pass compiles (GRAPH_MODE) and times every point once; later passes time again the
    points not settled yet.
    """
    import mindspore as ms

    from msllama.config import RuntimeConfig
    from msllama.weights import random_weights

    cfg = model_configs()[model]
    points = grid(mode)
    ms_mode, synchronize = MODES[mode]
    ms.set_context(pynative_synchronize=synchronize)
    rt = RuntimeConfig(mode=ms_mode, block_size=BLOCK_SIZE, num_blocks=num_blocks_for(points))
    start = time.time()
    runner = ModelRunner(cfg, rt, random_weights(cfg), exact_ladder(points[0]))
    tag = f"[{model} {mode}]"
    progress(f"{tag} model built in {time.time() - start:.1f} s, "
              f"{cfg.num_params() / 1e6:.1f} M params, {rt.num_blocks} KV blocks")
    rng, meter = np.random.default_rng(0), CpuMeter()
    all_series = []
    for i, p in enumerate(points, 1):
        series = start_series(runner, p, mode, rng)
        add_round(runner, series, meter)
        all_series.append(series)
        rec = series.record(mode)
        extra = f", compile {rec['compile_s']:.2f} s" if rec["compile_s"] is not None else ""
        progress(f"{tag} {i}/{len(points)} {time.time() - start:4.0f} s  {p.label()}: {rec['ms']:.2f} ms, "
                  f"{rec['tokens_per_s']:.0f} tok/s, iqr {rec['iqr_pct']:.0f} %{extra}, others {rec['other_cores']} cores")
    for extra_round in range(2, MAX_ROUNDS + 1):
        unsettled = [s for s in all_series if not s.settled()]
        if unsettled:
            progress(f"{tag} pass {extra_round}: {len(unsettled)} points not settled, {time.time() - start:.0f} s")
        for series in unsettled:
            add_round(runner, series, meter)
    for series in all_series:
        print(json.dumps({"model": model, "mode": mode, **series.record(mode)}), flush=True)
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps({"model": model, "mode": mode, "kind": "process", "peak_rss_gib": round(peak_gib, 2),
                      "quiet_wait_s": round(meter.waited_s, 1),
                      "seconds": round(time.time() - start, 1)}), flush=True)
    progress(f"{tag} done in {time.time() - start:.0f} s, peak RSS {peak_gib:.2f} GiB")


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---- driver -----------------------------------------------------------------------------------

def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    flags = next((line.split(":", 1)[1].split() for line in open("/proc/cpuinfo")
                  if line.startswith("flags")), [])
    mem_kib = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))
    return {"nproc": os.cpu_count(), "cpu": cpu, "avx2": "avx2" in flags, "avx512f": "avx512f" in flags,
            "mem_gib": round(mem_kib / 2**20, 1), "python": platform.python_version(),
            "numpy": np.__version__, "mindspore": version("mindspore")}


def run_pair(model: str, mode: str) -> tuple[list[dict], dict]:
    """Run one (model, mode) worker: its measurement records and a summary of its run."""
    started, load = time.strftime("%Y-%m-%d %H:%M"), os.getloadavg()[0]
    cmd = [sys.executable, __file__, "--worker", model, mode]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)  # progress goes to our stderr
    records, summary = [], {"model": model, "mode": mode, "started": started, "load1_before": round(load, 2),
                            "returncode": proc.returncode}
    for rec in (json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")):
        if rec["kind"] == "process":
            summary.update({k: v for k, v in rec.items() if k != "kind"})
        else:
            records.append(rec)
    if proc.returncode != 0:
        progress(f"[{model} {mode}] FAILED with exit code {proc.returncode}")
    return records, summary


STYLE = {"graph": "-", "pynative_sync": "--", "pynative": ":"}


def plot(records: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    models = list(dict.fromkeys(r["model"] for r in records))
    fig, axes = plt.subplots(len(models), 2, figsize=(13, 5 * len(models)), squeeze=False)
    for row, model in zip(axes, models):
        for ax, kind, x_key, line_key in ((row[0], "decode", "B", "L"), (row[1], "prefill", "T", "B")):
            sel = [r for r in records if r["model"] == model and r["kind"] == kind]
            lines = sorted({(r["mode"], r[line_key]) for r in sel}, key=lambda k: (list(STYLE).index(k[0]), k[1]))
            values = sorted({r[line_key] for r in sel})
            colors = dict(zip(values, plt.cm.viridis(np.linspace(0, 0.9, len(values)))))
            for mode, value in lines:
                pts = sorted((r[x_key], r["tokens_per_s"] if kind == "decode" else r["ms"], r["settled"])
                             for r in sel if r["mode"] == mode and r[line_key] == value)
                x, y, settled = zip(*pts)
                ax.plot(x, y, STYLE[mode], marker="o", ms=3, color=colors[value], label=f"{mode} {line_key}={value}")
                unsettled = [(xi, yi) for xi, yi, ok in pts if not ok]
                if unsettled:  # hollow: rounds did not agree, the figure is less certain
                    ax.plot(*zip(*unsettled), "o", ms=6, mfc="white", color=colors[value])
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ticks = sorted({r[x_key] for r in sel})
            ax.set_xticks(ticks, [str(t) for t in ticks])
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
            ax.set_xlabel("batch B (sequences)" if kind == "decode" else "new tokens T per step")
            ax.set_ylabel("decode tokens/s" if kind == "decode" else "prefill step ms")
            ax.set_title(f"{model}: {kind} ({'context L' if kind == 'decode' else 'B prompts'} per line)")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=6, ncol=2)
    fig.suptitle("ModelRunner.step on CPU, fp32: solid GRAPH_MODE, dashed PyNative sync, dotted PyNative async;\n"
                 "hollow markers: points whose fastest rounds did not agree within 15 % (noisy machine)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, help="folder for results.json and plot.png")
    ap.add_argument("--models", nargs="+", choices=["debug", "bench"], default=["debug", "bench"])
    ap.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    ap.add_argument("--replot", action="store_true", help="redraw plot.png from --out/results.json")
    ap.add_argument("--worker", nargs=2, metavar=("MODEL", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        run_worker(*args.worker)
        return
    if args.out is None:
        ap.error("argument --out: required")
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.json"
    if args.replot:
        plot(json.loads(results.read_text())["records"], args.out / "plot.png")
        return
    # Pairs already in results.json and not run now are kept: a pair disturbed by other work on
    # the machine can be measured again alone (--models/--modes).
    data = json.loads(results.read_text()) if results.exists() else {"meta": {}, "records": []}
    start = time.time()
    for model in args.models:
        for mode in args.modes:
            records, summary = run_pair(model, mode)
            data["records"] = [r for r in data["records"] if (r["model"], r["mode"]) != (model, mode)] + records
            runs = [r for r in data["meta"].get("runs", []) if (r["model"], r["mode"]) != (model, mode)]
            data["meta"] = {"machine": machine(), "block_size": BLOCK_SIZE,
                            "models": {m: {**dataclasses.asdict(c), "params": c.num_params()}
                                       for m, c in model_configs().items()},
                            "runs": runs + [summary]}
            results.write_text(json.dumps(data, indent=1) + "\n")
    plot(data["records"], args.out / "plot.png")
    progress(f"{len(data['records'])} records in {results}, this run took {time.time() - start:.0f} s")

if __name__ == "__main__":
    main()
