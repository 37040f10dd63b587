"""Issue-5 serving benchmark: one contest-shaped trace against our kit and its peers, on this machine.

    .venv/bin/python experiments/bench_serving.py [--requests 300] [--dataset D --tokenizer T]
        [--systems baseline,tuned,llamacpp,hf,limit] [--qps X] [--out experiments/<date>-serving-peers]

The trace is the judge's: the first N records of alpaca_5010 (the debug stand-in unless --dataset),
Poisson arrivals at X requests/s (high enough that the server, not the arrivals, is the bottleneck).
Every system serves the same bench weights (predict_llama2_bench.yaml, built if missing):
  baseline  our server, experiments/configs/llama_bench_baseline.yaml (the contest kit's policy), legacy judge
  tuned     our server, experiments/configs/llama_bench_tuned.yaml, legacy judge, then (restarted) openai judge
  llamacpp  llama-server (--parallel = tuned max decode batch capped at llama.cpp's 256, -kvu, -t 2) on a GGUF export; greedy
            tokens checked against msllama.reference first; exact numerics (-fa off, f32 KV), then defaults
  hf        HF transformers static batched generate (peers/hf_static_batch.py), batch 16, torch threads 2
  limit     physical_limit.py: max(FLOPs / peak FLOP/s, bytes / bandwidth) for this trace
Writes command.txt, environment.json, results.json, README.md and plot.png to --out (after every
system, so a failure or Ctrl-C keeps what was measured); server logs and judge outputs go to --work
(out/bench-serving-<time>/). Every server started here is stopped on exit, errors and Ctrl-C included.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
import traceback
import urllib.request
from dataclasses import dataclass
from importlib import metadata
from types import SimpleNamespace
from typing import Callable, Iterator

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "performance_serving"))
sys.path.insert(0, os.path.join(HERE, "peers"))
from main_job import Server, StepFailed, free_port, run  # noqa: E402

import bench_report  # noqa: E402
import physical_limit  # noqa: E402
from step_latency import CpuMeter  # noqa: E402
from judge.trace import TraceRequest  # noqa: E402
from llamacpp import EXACT_FLAGS, LlamaServer, server_binary  # noqa: E402

PY = sys.executable
SYSTEMS = ("baseline", "tuned", "llamacpp", "hf", "limit")
CONFIGS = {"baseline": os.path.join(HERE, "configs", "llama_bench_baseline.yaml"),
           "tuned": os.path.join(HERE, "configs", "llama_bench_tuned.yaml")}
JUDGE = os.path.join(ROOT, "performance_serving", "test_serving_performance.py")
HF_PEER = os.path.join(HERE, "peers", "hf_static_batch.py")
BENCH_CKPT = os.path.join(ROOT, ".cache", "bench", "llama2_bench.ckpt")
EXPORTS = os.path.join(ROOT, ".cache", "bench", "peers")
CHECK_PROMPTS, CHECK_TOKENS = 4, 32      # greedy agreement of the peers with the float64 reference
HF_BATCH, THREADS = 16, 2
QUIET_SHARE = 0.1                        # other processes' CPU share above which figures are suspect
# What the figures depend on: a results folder's quiet measurements stay valid while these are unchanged.
MEASURED_CODE = ("mindformers", "llm-serving", "performance_serving", "experiments/configs", "experiments/peers")


class Skipped(Exception):
    """A system cannot run here (a missing binary or package); the message says how to fix it."""


def say(text: str) -> None:
    print(f"\033[1m==> {text}\033[0m" if sys.stdout.isatty() else f"==> {text}", flush=True)


@dataclass
class Bench:
    args: argparse.Namespace
    work: str                       # logs, judge outputs, exported requests (not committed)
    trace: list[TraceRequest]

    @property
    def n(self) -> int:
        return len(self.trace)

    def prompt_ids(self) -> list[list[int]]:
        """Each trace prompt as our server tokenizes it (BOS first)."""
        from msllama.tokenizer import Tokenizer

        tok = Tokenizer(self.args.tokenizer)
        return [tok.encode(r.prompt) for r in self.trace]


# ---- the judge and our server ------------------------------------------------------------------

def _p50_p99(stats: dict) -> dict:
    return {"p50": stats["median"], "p99": stats["p99"]}


def judge_metrics(summary: dict) -> dict:
    """The judge's summary, reduced to what the report compares."""
    return {"exec_time_s": summary["run"]["exec_time_s"], "backend": summary["run"]["backend"],
            "completed": summary["completed"], "failed": summary["failed"],
            "request_throughput": summary["request_throughput"], "output_throughput": summary["output_throughput"],
            "total_output_tokens": summary["total_output_tokens"], "ttft_ms": _p50_p99(summary["ttft_ms"]),
            "tpot_ms": _p50_p99(summary["tpot_ms"])}


def judge(b: Bench, port: int, backend: str, name: str) -> dict:
    """The judge over the trace against 127.0.0.1:port; its progress bar shows on the terminal."""
    out_dir = os.path.join(b.work, name)
    os.makedirs(out_dir, exist_ok=True)
    a = b.args
    cmd = [PY, JUDGE, "-X", str(a.qps), "-T", str(math.ceil(b.n / a.qps)), "--num-requests", str(b.n),
           "-P", str(port), "-O", out_dir, "--dataset", a.dataset, "--tokenizer", a.tokenizer,
           "--backend", backend, "--warmup", str(a.warmup)]
    summary_path = os.path.join(out_dir, f"summary_{float(a.qps)}_x.json")
    if os.path.exists(summary_path):   # an earlier run's summary must never pass for this one's
        os.remove(summary_path)
    say(f"{name}: judge ({backend} backend), {b.n} requests at X={a.qps}")
    code = subprocess.call(cmd, cwd=out_dir)   # testLog/ lands in out_dir, as in the contest
    if code not in (0, 1) or not os.path.isfile(summary_path):   # 1 = some requests failed: still measured
        raise StepFailed(f"the judge failed (exit code {code}): {shlex.join(cmd)}")
    with open(summary_path, encoding="utf-8") as f:
        return judge_metrics(json.load(f))


def engine_profile(port: int) -> dict:
    """Where our engine thread spent its time so far, from /metrics (llm_engine_*): per step kind
    the steps, the tokens fed and the seconds of each phase (schedule, prepare, submit, wait,
    model = the agents' own share of wait, update, detokenize)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    profile: dict[str, dict] = {}
    for line in text.splitlines():
        if not line.startswith("llm_engine_"):
            continue
        name_labels, value = line.rsplit(" ", 1)
        name, labels = name_labels.rstrip("}").split("{", 1)
        tags = dict(item.split("=", 1) for item in labels.split(","))
        kind = profile.setdefault(tags['kind'].strip('"'), {"steps": 0, "tokens": 0, "phase_s": {}})
        if name == "llm_engine_steps_total":
            kind["steps"] = int(float(value))
        elif name == "llm_engine_step_tokens_total":
            kind["tokens"] = int(float(value))
        else:
            kind["phase_s"][tags["phase"].strip('"')] = float(value)
    return profile


@contextlib.contextmanager
def kit_server(b: Bench, system: str, log_name: str) -> Iterator[int]:
    """Our server with `system`'s YAML on a free port; stopped with SIGINT (then killed) on exit."""
    port = free_port(b.args.port)
    say(f"{system}: starting our server ({os.path.relpath(CONFIGS[system], ROOT)}, port {port})")
    start = time.monotonic()
    server = Server(SimpleNamespace(config=CONFIGS[system], port=port, tokenizer=b.args.tokenizer), 1,
                    os.path.join(b.work, log_name))
    try:
        server.wait_ready(b.args.start_timeout)
        say(f"{system}: server ready in {time.monotonic() - start:.0f} s")
        yield port
    finally:
        say(f"{system}: stopping the server")
        try:
            server.stop()
        except StepFailed as e:
            print(f"    warning: {e}", file=sys.stderr)


def run_kit(b: Bench, system: str) -> dict:
    with kit_server(b, system, f"server_{system}.log") as port:
        metrics = judge(b, port, "legacy", system)
        metrics["engine_profile"] = engine_profile(port)   # includes the judge's warm-up requests
    if system == "tuned" and not b.args.no_openai_run:
        # A fresh server, so the second route does not start with the first one's prefix cache.
        with kit_server(b, system, f"server_{system}_openai.log") as port:
            metrics["openai"] = judge(b, port, "openai", f"{system}_openai")
    return metrics


# ---- peers: exported weights --------------------------------------------------------------------

def _file_key(*paths: str) -> str:
    h = hashlib.sha256()
    for path in paths:
        st = os.stat(path)
        h.update(f"{os.path.abspath(path)}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def hf_export() -> str:
    """The bench checkpoint as an HF folder (msllama.convert), rebuilt when the checkpoint changes."""
    folder = os.path.join(EXPORTS, "hf")
    stamp = os.path.join(folder, "source.key")
    key = _file_key(BENCH_CKPT)
    if not (os.path.isfile(stamp) and _read(stamp) == key):
        say("exporting the bench weights as an HF folder (msllama.convert)")
        shutil.rmtree(folder, ignore_errors=True)
        run([PY, "-m", "msllama.convert", "--src", BENCH_CKPT, "--dst", folder, "--to", "hf",
              "--config", physical_limit.BENCH_PREDICT_YAML], "msllama.convert")
        with open(stamp, "w") as f:
            f.write(key)
    return folder


def gguf_export(b: Bench) -> str:
    """The bench weights + the run's tokenizer as an f32 GGUF (msllama.export_gguf), cached by both."""
    src = hf_export()
    path = os.path.join(EXPORTS, f"bench-{_file_key(BENCH_CKPT, b.args.tokenizer)}.gguf")
    if not os.path.isfile(path):
        say("exporting the bench weights to GGUF (msllama.export_gguf)")
        run([PY, "-m", "msllama.export_gguf", "--src", src, "--tokenizer", b.args.tokenizer, "--out", path + ".tmp"],
             "msllama.export_gguf")
        os.replace(path + ".tmp", path)
    return path


@functools.lru_cache(maxsize=1)
def _reference_model(folder: str):
    from msllama.checkpoint import load_weights, read_hf_config
    from msllama.reference import ReferenceModel

    cfg = read_hf_config(folder)
    return ReferenceModel(cfg, load_weights(folder, cfg))


def reference_greedy(prompts: list[list[int]], lengths: list[int]) -> list[list[int]]:
    """The float64 reference's greedy continuations (stopping at EOS) of the check prompts."""
    ref = _reference_model(hf_export())
    return [ref.greedy(ids, n)[0] for ids, n in zip(prompts, lengths)]


def agreement(reference: list[list[int]], got: list[list[int]]) -> dict:
    """Per prompt: how many leading greedy tokens equal the reference's (over the reference's length)."""
    matched = []
    for ref, out in zip(reference, got):
        n = next((i for i, (x, y) in enumerate(zip(ref, out)) if x != y), min(len(ref), len(out)))
        matched.append(n)
    compared = [len(r) for r in reference]
    return {"prompts": len(reference), "tokens_compared": sum(compared), "tokens_matched": sum(matched),
            "identical_prompts": sum(m == c for m, c in zip(matched, compared)), "matched_prefix": matched}


# ---- llama.cpp ------------------------------------------------------------------------------------

LLAMACPP_MAX_PARALLEL = 256   # llama.cpp: "n_seq_max must be <= 256"


def tuned_max_batch() -> int:
    with open(CONFIGS["tuned"], encoding="utf-8") as f:
        return int(yaml.safe_load(f)["model_config"]["decode_batch_size"][-1])


def tokenization_mismatches(url: str, b: Bench, ours: list[list[int]]) -> int:
    """Trace prompts that llama-server tokenizes differently from our server (BOS included)."""
    import requests

    with requests.Session() as s:
        s.trust_env = False   # loopback only: never through a proxy
        bad = 0
        for req, ids in zip(b.trace, ours):
            r = s.post(url + "/tokenize", json={"content": req.prompt, "add_special": True}, timeout=30)
            r.raise_for_status()
            bad += r.json()["tokens"] != ids
    return bad


def run_llamacpp(b: Bench) -> dict:
    if not os.access(server_binary(), os.X_OK):
        raise Skipped(f"llama-server not found at {server_binary()}: build it with "
                      f"experiments/peers/build_llamacpp.sh (~15 min on 2 cores), or set $LLAMA_SERVER")
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise Skipped("the gguf package is missing: .venv/bin/pip install -r requirements-bench.txt") from None
    model = gguf_export(b)
    parallel = min(tuned_max_batch(), LLAMACPP_MAX_PARALLEL)
    longest = max(r.input_tokens + r.max_new_tokens for r in b.trace)
    ctx = parallel * 256 * math.ceil(longest / 256)   # -kvu shares these cells; every slot could hold the longest
    ids = b.prompt_ids()
    check = ids[:CHECK_PROMPTS]
    say(f"llamacpp: float64 reference greedy tokens for {len(check)} prompts")
    reference = reference_greedy(check, [CHECK_TOKENS] * len(check))
    results: dict = {}
    for label, flags in (("exact", EXACT_FLAGS), ("default", ())):
        name = "llamacpp" if label == "exact" else "llamacpp_default"
        port = free_port(b.args.port)
        say(f"{name}: starting llama-server ({' '.join(flags) or 'default numerics'}, -np {parallel} -kvu "
            f"-c {ctx} -t {THREADS}, port {port})")
        server = LlamaServer(model, flags=(*flags, "-kvu"), ctx_size=ctx, parallel=parallel, threads=THREADS,
                             log_path=os.path.join(b.work, f"server_{name}.log"), startup_timeout=120, port=port)
        with server:
            got = [server.greedy(p, CHECK_TOKENS) for p in check]
            agree = agreement(reference, got)
            mismatched = tokenization_mismatches(server.url, b, ids)
            say(f"{name}: greedy agreement with the reference {agree['tokens_matched']}/{agree['tokens_compared']} "
                f"tokens; prompts tokenized differently from ours: {mismatched}/{b.n}")
            metrics = judge(b, port, "openai", name)
            say(f"{name}: stopping llama-server")
        metrics.update(flags=[*flags, "-kvu", "-np", str(parallel), "-c", str(ctx), "-t", str(THREADS)],
                       reference_agreement=agree, tokenization_mismatches=mismatched)
        results[label] = metrics
    return {**results["exact"], "default_numerics": results["default"]}


# ---- HF transformers --------------------------------------------------------------------------------

def run_hf(b: Bench) -> dict:
    missing = [p for p in ("torch", "transformers") if _version(p) is None]
    if missing:
        raise Skipped(f"{' and '.join(missing)} missing: .venv/bin/pip install -r requirements-bench.txt")
    folder = hf_export()
    ids = b.prompt_ids()
    requests_path = os.path.join(b.work, "hf_requests.json")
    with open(requests_path, "w", encoding="utf-8") as f:
        json.dump([{"prompt_ids": p, "max_new_tokens": r.max_new_tokens} for p, r in zip(ids, b.trace)], f)
    out = os.path.join(b.work, "hf_result.json")
    say(f"hf: static batched generate, batch {HF_BATCH}, torch threads {THREADS}, {b.n} requests in trace order")
    run([PY, HF_PEER, "--model", folder, "--requests", requests_path, "--batch", str(HF_BATCH),
          "--threads", str(THREADS), "--out", out], "the HF peer")
    with open(out, encoding="utf-8") as f:
        result = json.load(f)
    outputs = result.pop("outputs")
    say(f"hf: float64 reference greedy tokens for {CHECK_PROMPTS} prompts")
    check = ids[:CHECK_PROMPTS]
    lengths = [min(CHECK_TOKENS, r.max_new_tokens) for r in b.trace[:len(check)]]   # HF stops at each request's length
    reference = reference_greedy(check, lengths)
    result["reference_agreement"] = agreement(reference, [out[:n] for out, n in zip(outputs, lengths)])
    return result


# ---- the physical limit ---------------------------------------------------------------------------

def run_limit(b: Bench) -> dict:
    say("limit: measuring peak fp32 GEMM rate and memory bandwidth (about half a minute)")
    from msllama.config import load_predict_config

    cfg = load_predict_config(physical_limit.BENCH_PREDICT_YAML).model
    cost = physical_limit.trace_cost(cfg, [r.input_tokens for r in b.trace], [r.max_new_tokens for r in b.trace])
    lim = physical_limit.limit(cost, physical_limit.measure_peak())
    print(physical_limit.format_limit(lim), flush=True)
    return lim.to_json()


RUNNERS: dict[str, Callable[[Bench], dict]] = {
    "baseline": lambda b: run_kit(b, "baseline"), "tuned": lambda b: run_kit(b, "tuned"),
    "llamacpp": run_llamacpp, "hf": run_hf, "limit": run_limit,
}


# ---- run record -----------------------------------------------------------------------------------

def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def others_cpu_share(seconds: float = 2.0) -> float:
    """Busy share of all cores over a short window while this benchmark runs nothing: other users' load."""
    meter = CpuMeter()
    time.sleep(seconds)
    return meter.others() / (os.cpu_count() or 1)


def wait_until_quiet(system: str, patience: float) -> float:
    """Other processes' CPU share, after waiting up to `patience` s for it to fall below QUIET_SHARE."""
    deadline = time.monotonic() + patience
    share = others_cpu_share()
    while share > QUIET_SHARE and time.monotonic() < deadline:
        print(f"    {system}: other processes use {100 * share:.0f} % of the CPU; waiting for a quiet machine "
              f"({deadline - time.monotonic():.0f} s left)", flush=True)
        time.sleep(10)
        share = others_cpu_share()
    return share


def reusable(out: str, env: dict, trace_info: dict) -> dict[str, tuple[dict, dict]]:
    """Systems of out/results.json measured on a quiet machine with this trace and unchanged served code."""
    path = os.path.join(out, "results.json")
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        old = json.load(f)
    if old.get("trace") != trace_info:
        say(f"--keep-quiet: {path} was measured on another trace: measuring every system")
        return {}
    commit = old["environment"]["git_commit"]
    same_code = subprocess.call(["git", "-C", ROOT, "diff", "--quiet", commit, "HEAD", "--", *MEASURED_CODE]) == 0
    if old["environment"]["git_tracked_changes"] or env["git_tracked_changes"] or not same_code:
        say(f"--keep-quiet: the served code changed since {commit[:10]} (or has uncommitted changes): "
            "measuring every system")
        return {}
    keep = {}
    for name, metrics in old["systems"].items():
        load = old["others_cpu_share"].get(name, {})
        quiet = max(load.get("before", 1.0), load.get("after", 1.0)) <= QUIET_SHARE
        if quiet and "skipped" not in metrics and "error" not in metrics:
            keep[name] = (metrics, load)
    return keep


def environment() -> dict:
    with open("/proc/cpuinfo") as f:
        info = dict(line.split(":", 1) for line in f.read().split("\n\n")[0].splitlines() if ":" in line)
    info = {k.strip(): v.strip() for k, v in info.items()}
    flags = info.get("flags", "").split()
    cpu = (f"{info.get('model name') or platform.processor()} (family {info.get('cpu family')} model "
           f"{info.get('model')}, {'AVX-512' if 'avx512f' in flags else 'AVX2' if 'avx2' in flags else 'no AVX2'})")
    with open("/proc/meminfo") as f:
        mem_kb = next((int(line.split()[1]) for line in f if line.startswith("MemTotal")), 0)
    llama = None
    if os.access(server_binary(), os.X_OK):
        done = subprocess.run([server_binary(), "--version"], capture_output=True, text=True, timeout=30)
        llama = next((line for line in (done.stdout + done.stderr).splitlines() if line.startswith("version")), None)
    git = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return {"nproc": os.cpu_count(), "cpu": cpu, "memory_gib": round(mem_kb / 2 ** 20, 1),
            "platform": platform.platform(), "python": platform.python_version(),
            "packages": {p: _version(p) for p in ("numpy", "mindspore", "torch", "transformers", "gguf",
                                                  "sentencepiece", "uvicorn")},
            "llama_server": llama, "git_commit": git, "git_tracked_changes": bool(dirty),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--requests", type=int, default=300, help="the first N records of the dataset")
    p.add_argument("--dataset", default=physical_limit.DEFAULT_DATASET, help="alpaca JSON (contest: alpaca_5010.json)")
    p.add_argument("--tokenizer", default=physical_limit.DEFAULT_TOKENIZER, help="sentencepiece tokenizer.model")
    p.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated, run in this order")
    p.add_argument("--qps", type=float, default=100.0, help="judge request rate (all requests within seconds)")
    p.add_argument("--out", default=os.path.join(HERE, time.strftime("%Y-%m-%d") + "-serving-peers"),
                   help="results folder (README.md, results.json, plot.png, command.txt, environment.json)")
    p.add_argument("--work", default=os.path.join(ROOT, "out", time.strftime("bench-serving-%Y%m%d-%H%M%S")),
                   help="server logs, judge outputs and per-request records (git-ignored out/ by default)")
    p.add_argument("--port", type=int, default=8835, help="first port tried for each server")
    p.add_argument("--warmup", type=int, default=2, help="judge warm-up requests per server (not timed)")
    p.add_argument("--start-timeout", type=float, default=900, help="seconds for our server to compile and serve")
    p.add_argument("--no-openai-run", action="store_true", help="skip the tuned server's second (openai) judge run")
    p.add_argument("--keep-quiet", action="store_true",
                   help="keep the figures of systems that --out/results.json measured on a quiet machine (same "
                        "trace, served code unchanged since) and measure only the others")
    p.add_argument("--quiet-wait", type=float, default=0.0,
                   help="before each system, wait up to this many seconds for other processes to leave the CPU")
    args = p.parse_args(argv)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown or not systems:
        p.error(f"--systems: unknown {unknown}; choose from {','.join(SYSTEMS)}")
    args.systems = list(dict.fromkeys(systems))
    if args.requests < 1:
        p.error(f"--requests must be >= 1, got {args.requests}")
    if args.qps <= 0:
        p.error(f"--qps must be > 0, got {args.qps}")
    for flag, path in (("--dataset", args.dataset), ("--tokenizer", args.tokenizer)):
        if not os.path.isfile(path):
            p.error(f"{flag}: file not found: {path}")
    args.dataset, args.tokenizer, args.out, args.work = map(os.path.abspath, (args.dataset, args.tokenizer, args.out, args.work))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = args.work
    os.makedirs(work, exist_ok=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "command.txt"), "a" if args.keep_quiet else "w") as f:
        f.write(shlex.join([os.path.relpath(PY, ROOT), os.path.relpath(os.path.abspath(__file__), ROOT),
                            *(argv if argv is not None else sys.argv[1:])]) + "\n")
    env = environment()
    with open(os.path.join(args.out, "environment.json"), "w") as f:
        json.dump(env, f, indent=2)
    say("bench assets (msllama.assets --bench: seconds when already built)")
    run([PY, "-m", "msllama.assets", "--bench"], "building the bench assets")
    trace = physical_limit.judge_trace(args.dataset, args.tokenizer, args.requests, args.qps)
    b = Bench(args, work, trace)
    record = bench_report.new_record(args, env, trace)
    kept = reusable(args.out, env, record["trace"]) if args.keep_quiet else {}
    say(f"trace: {b.n} requests, {sum(r.input_tokens for r in trace)} prompt + "
        f"{sum(r.max_new_tokens for r in trace)} requested output tokens, last arrival at {trace[-1].send_at:.1f} s; "
        f"systems: {', '.join(args.systems)}")
    code = 0
    try:
        for system in args.systems:
            if system in kept:
                record["systems"][system], record["others_cpu_share"][system] = kept[system]
                say(f"{system}: kept from the previous run (measured on a quiet machine"
                    f"{', ' + kept[system][1]['at'] if 'at' in kept[system][1] else ''})")
                continue
            load = {"before": wait_until_quiet(system, args.quiet_wait), "at": time.strftime("%Y-%m-%d %H:%M:%S")}
            start = time.monotonic()
            record["others_cpu_share"][system] = load
            if load["before"] > QUIET_SHARE:
                say(f"{system}: warning: other processes use {100 * load['before']:.0f} % of the CPU: they share "
                    "the cores with this benchmark and its figures will be worse than this machine can do")
            try:
                record["systems"][system] = RUNNERS[system](b)
                say(f"{system}: done in {time.monotonic() - start:.0f} s")
            except Skipped as e:
                say(f"{system}: skipped: {e}")
                record["systems"][system] = {"skipped": str(e)}
            except Exception as e:   # one broken system must not lose the others' figures
                traceback.print_exc()
                say(f"{system}: FAILED: {e}")
                record["systems"][system] = {"error": f"{type(e).__name__}: {e}"}
                code = 1
            load["after"] = others_cpu_share()
            bench_report.save(record, args.out)
    except KeyboardInterrupt:
        print("interrupted: writing what was measured", file=sys.stderr)
        code = 130
    bench_report.save(record, args.out)
    print(bench_report.summary_text(record))
    say(f"results in {os.path.relpath(args.out, os.getcwd())}/ (results.json, README.md, plot.png)")
    return code


if __name__ == "__main__":
    sys.exit(main())
