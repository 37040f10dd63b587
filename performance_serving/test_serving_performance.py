"""Serving benchmark judge, command-line compatible with the contest's performance_serving script.

    python test_serving_performance.py -X 10 -T 150 [-P 8835] [-O ./] [--task 1|2] ...

Sends int(X*T) streamed requests built from an alpaca dataset at Poisson-spaced times, then writes
<out_dir>/result_<X>_x.json (per request), summary_<X>_x.json and plot_<X>_x.png, and logs
`All Tasks Done; Exec Time is <s>` to ./testLog/. Exit code 0 when every request completed,
1 when some failed, 2 on bad arguments or missing input files.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple

from tqdm import tqdm

from judge.client import Backend, RequestRecord, RunResult, legacy_backend, openai_backend, run_trace
from judge.metrics import Summary, format_summary, summarize
from judge.plot import plot_run
from judge.trace import TraceRequest, build_trace, find_data_file, load_records, load_tokenizer

REPO = Path(__file__).resolve().parent.parent
DEBUG_DATA_DIR = REPO / ".cache" / "debug"  # the kit's generated stand-ins for the contest files
TASK_DATASETS = {1: "alpaca_5010.json", 2: "alpaca_521.json"}
TOKENIZER_FILE = "tokenizer.model"
DEFAULT_SEED = 1234


def _positive(kind: Callable[[str], Any], name: str) -> Callable[[str], Any]:
    """An argparse type: `kind(text)` that must be > 0, with an error naming the flag."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a {kind.__name__}, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{name} must be > 0, got {text}")
        return value
    return parse


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-X", "--qps", type=_positive(float, "-X/--qps"), required=True, help="requests per second")
    p.add_argument("-P", "--port", type=int, default=8835)
    p.add_argument("-O", "--out_dir", default="./", help="folder for result/summary/plot files")
    p.add_argument("-T", "--test_time", type=_positive(int, "-T/--test_time"), default=3600,
                   help="sending duration (s); the run sends int(X*T) requests")
    p.add_argument("--task", type=int, choices=sorted(TASK_DATASETS), default=1,
                   help="1: speed (alpaca_5010.json), 2: precision (alpaca_521.json)")
    p.add_argument("--dataset", help="alpaca JSON (default: ./<task file>, else the kit's debug stand-in)")
    p.add_argument("--tokenizer", help="sentencepiece model (default: ./tokenizer.model, else the debug one)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the arrival gaps")
    p.add_argument("--backend", choices=("legacy", "openai"), default="legacy",
                   help="legacy: /models/llama2/generate_stream; openai: /v1/completions (SSE)")
    p.add_argument("--model", default="llama2", help="model name in openai request bodies")
    p.add_argument("--warmup", type=int, default=0, help="requests sent and awaited before the timed run")
    p.add_argument("--num-requests", type=_positive(int, "--num-requests"), help="override int(X*T)")
    p.add_argument("--max-records", type=_positive(int, "--max-records"),
                   help="use only the dataset's first N records (cycled)")
    args = p.parse_args(argv)
    if not 0 < args.port < 65536:
        p.error(f"-P/--port must be in 1..65535, got {args.port}")
    if args.warmup < 0:
        p.error(f"--warmup must be >= 0, got {args.warmup}")
    if args.num_requests is None and int(args.qps * args.test_time) < 1:
        p.error(f"-X * -T must give at least one request, got int({args.qps} * {args.test_time}) = 0")
    return args


def output_path(out_dir: str | Path, kind: str, qps: float, ext: str) -> Path:
    """`<out_dir>/<kind>_<X>_x.<ext>` with X as Python prints the float (result_10.0_x.json)."""
    return Path(out_dir) / f"{kind}_{float(qps)}_x.{ext}"


def _open_log() -> logging.Logger:
    """A logger writing to ./testLog/test_performance_<date-time>.log, as the contest judge did."""
    log_dir = Path("testLog")
    log_dir.mkdir(exist_ok=True)
    logger = logging.getLogger("judge")
    logger.setLevel(logging.INFO)
    for old in list(logger.handlers):  # a second main() in one process starts a new file
        logger.removeHandler(old)
        old.close()
    handler = logging.FileHandler(log_dir / f"test_performance_{time.strftime('%Y-%m-%d-%H_%M')}.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    return logger


def _raise_open_file_limit() -> None:
    """Every in-flight request holds a socket: allow as many as the hard limit permits."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass  # keep the soft limit; a shortage shows up as recorded connection failures


class _Progress:
    """A tqdm bar of completed requests that also shows how many failed so far."""

    def __init__(self, total: int) -> None:
        self.bar = tqdm(total=total, desc="completed", unit="req")
        self.failed = 0

    def __call__(self, record: RequestRecord) -> None:
        self.bar.update(1)
        if not record.ok:
            self.failed += 1
            self.bar.set_postfix(failed=self.failed)


def _make_backend(args: argparse.Namespace) -> Backend:
    base_url = f"http://{args.host}:{args.port}"
    return legacy_backend(base_url) if args.backend == "legacy" else openai_backend(base_url, args.model)


def _input_file(explicit: Optional[str], name: str, flag: str) -> Path:
    if explicit:
        if not Path(explicit).is_file():
            raise FileNotFoundError(f"{flag}: file not found: {explicit}")
        return Path(explicit)
    try:  # the contest habit first: the file in the cwd
        return find_data_file(name, [Path.cwd(), DEBUG_DATA_DIR])
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{exc}; pass {flag} PATH") from None


def _load_trace(args: argparse.Namespace) -> Tuple[Path, List[TraceRequest]]:
    """The dataset path and the trace; errors name the flag or file at fault."""
    dataset = _input_file(args.dataset, TASK_DATASETS[args.task], "--dataset")
    tokenizer = _input_file(args.tokenizer, TOKENIZER_FILE, "--tokenizer")
    records = load_records(dataset)[: args.max_records]
    try:
        sp = load_tokenizer(tokenizer)
    except (OSError, RuntimeError) as exc:
        raise ValueError(f"--tokenizer: {tokenizer} is not a sentencepiece model ({exc})") from None
    num_requests = args.num_requests or int(args.qps * args.test_time)
    return dataset, build_trace(records, sp, num_requests, args.qps, args.seed)


def _write_outputs(args: argparse.Namespace, run: RunResult, summary: Summary, run_info: dict) -> None:
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(output_path(out_dir, "result", args.qps, "json"), "w", encoding="utf-8") as f:
        json.dump([dataclasses.asdict(r) for r in run.records], f, ensure_ascii=False)
    with open(output_path(out_dir, "summary", args.qps, "json"), "w", encoding="utf-8") as f:
        json.dump({"run": run_info, **dataclasses.asdict(summary)}, f, indent=2, ensure_ascii=False)
    plot_run(run.records, output_path(out_dir, "plot", args.qps, "png"),
             title=f"{args.backend} X={args.qps} n={len(run.records)}")


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        dataset, trace = _load_trace(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    backend = _make_backend(args)
    _raise_open_file_limit()
    logger = _open_log()
    run_info = {"backend": args.backend, "url": backend.url, "qps": args.qps, "test_time": args.test_time,
                "num_requests": len(trace), "seed": args.seed, "dataset": str(dataset)}
    logger.info("run: %s", run_info)

    if args.warmup:
        warm = [dataclasses.replace(trace[i % len(trace)], send_at=0.0) for i in range(args.warmup)]
        warm_failed = [r for r in run_trace(warm, backend).records if not r.ok]
        print(f"warm-up: {args.warmup} requests, {len(warm_failed)} failed"
              + (f" (first: {warm_failed[0].error})" if warm_failed else ""))

    progress = _Progress(len(trace))
    run = run_trace(trace, backend, on_record=progress)
    progress.bar.close()
    logger.info("All Tasks Done; Exec Time is %s", run.duration)
    summary = summarize(run.records, run.duration)
    _write_outputs(args, run, summary, {**run_info, "exec_time_s": run.duration, "client_cpu_s": run.client_cpu_s})
    text = f"{format_summary(summary)}\n{'Judge CPU while sending (s):':<40}{run.client_cpu_s:.2f}"
    logger.info("summary:\n%s", text)
    print(f"All Tasks Done; Exec Time is {run.duration}\n{text}")
    return 0 if summary.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
