"""The main job of `./run.sh`: the whole kit on this machine, end to end, with one summary.

  1. start the server (task 1) with the CPU debug config and wait until it serves
  2. the judge, task 1: a scaled contest trace at a rate that keeps the server busy
  3. restart the server with --task 2 (logits rows saved)
  4. the judge, task 2: the first N records of alpaca_521 sent fast (decode batches > 1)
  5. acc_allclose against the reference logits (file_npy_base, or built for other data)

Everything runs as subprocesses over HTTP, as a user would run it. Outputs go to
out/run-<time>/ (server logs, judge results and plots, logits). Exit code 1 if any step fails.
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
DEBUG = os.path.join(ROOT, ".cache", "debug")
SERVING_YAML = os.path.join(ROOT, "llm-serving", "configs", "llama", "llama_7b_kbk_pa_dyn_debug.yaml")
PREDICT_YAML = os.path.join(ROOT, "mindformers", "configs", "llama2", "predict_llama2_7b_debug.yaml")
BASE_ARCHIVE = os.path.join(ROOT, "file_npy_base", "alpaca_521_500.npz")


class StepFailed(RuntimeError):
    pass


def say(text: str) -> None:
    print(f"\033[1m==> {text}\033[0m" if sys.stdout.isatty() else f"==> {text}", flush=True)


class Server:
    """`examples/start.py` in a subprocess; its output goes to a log and, filtered, to us."""

    def __init__(self, args: argparse.Namespace, task: int, log_path: str, logits_dir: str = ""):
        cmd = [PY, os.path.join(ROOT, "llm-serving", "examples", "start.py"), "--task", str(task),
               "--config", args.config, "--port", str(args.port)]
        if args.tokenizer:
            cmd += ["--tokenizer", args.tokenizer]
        if logits_dir:
            cmd += ["--save-logits-dir", logits_dir]
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        self.url = f"http://127.0.0.1:{args.port}"
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.log.write(line)
            self.log.flush()
            if line.startswith(("compiling", "compiled", "model ready", "Serving", "error", "config error",
                                "server stopped")) and "WARNING" not in line:
                end = "\r" if line.startswith("compiling") and sys.stdout.isatty() else "\n"
                print(f"    server: {line.rstrip()}", end=end, flush=True)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise StepFailed(f"the server exited with code {self.proc.returncode} (log: {self.log.name})")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise StepFailed(f"the server did not become healthy in {timeout:.0f} s (log: {self.log.name})")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=5)
        self.log.close()
        if self.proc.returncode != 0:
            raise StepFailed(f"the server exited with code {self.proc.returncode} (log: {self.log.name})")


def run(cmd: list[str], what: str, cwd: str | None = None) -> None:
    code = subprocess.call(cmd, cwd=cwd)
    if code != 0:
        raise StepFailed(f"{what} failed (exit code {code}): {' '.join(cmd)}")


def judge(args: argparse.Namespace, task: int, qps: float, test_time: int, out_dir: str,
          dataset: str, records: int | None = None) -> dict:
    os.makedirs(out_dir, exist_ok=True)
    cmd = [PY, os.path.join(ROOT, "performance_serving", "test_serving_performance.py"), "--task", str(task),
           "-X", str(qps), "-T", str(test_time), "-P", str(args.port), "-O", out_dir, "--dataset", dataset,
           "--warmup", str(args.warmup)]
    if records is not None:
        cmd += ["--num-requests", str(records)]
    if args.tokenizer:
        cmd += ["--tokenizer", args.tokenizer]
    run(cmd, f"the judge (task {task})", cwd=out_dir)   # testLog/ lands in out_dir, as in the contest
    (summary,) = glob.glob(os.path.join(out_dir, "summary_*_x.json"))
    with open(summary) as f:
        return json.load(f)


def base_for(args: argparse.Namespace, dataset: str, records: int, out_dir: str) -> str:
    """A baseline folder holding exactly the first `records` records of `dataset`."""
    cmd = [PY, "-m", "msllama.npy_base", "--dataset", dataset, "--records", str(records), "--out", out_dir,
           "--config", args.predict_config]
    if args.tokenizer:
        cmd += ["--tokenizer", args.tokenizer]
    shipped = (not args.tokenizer and os.path.abspath(dataset) == os.path.join(DEBUG, "alpaca_521.json")
               and os.path.abspath(args.config) == SERVING_YAML)
    if shipped and records == 500:
        return os.path.dirname(BASE_ARCHIVE)
    if shipped and records < 500:
        run(cmd + ["--subset-of", BASE_ARCHIVE], "extracting the baseline rows")
    else:
        say(f"building reference logits for {records} records with the float64 model (a few minutes)")
        run(cmd, "building the baseline")
    return out_dir


def free_port(port: int) -> int:
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", port)) != 0:
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="CPU debug end-to-end: server, judge tasks 1 and 2, precision")
    p.add_argument("--config", default=SERVING_YAML, help="serving YAML (default: the CPU debug config)")
    p.add_argument("--predict-config", default=PREDICT_YAML,
                   help="its model's predict YAML, for building reference logits")
    p.add_argument("--dataset", default=os.path.join(DEBUG, "alpaca_5010.json"), help="task-1 dataset")
    p.add_argument("--task2-dataset", default="",
                   help="task-2 dataset (default: alpaca_521.json beside --dataset)")
    p.add_argument("--tokenizer", default="", help="tokenizer.model for server and judge (default: the config's)")
    p.add_argument("-X", "--qps", type=float, default=20.0, help="task 1 request rate")
    p.add_argument("-T", "--test_time", type=int, default=15, help="task 1 sending time in s (X*T requests)")
    p.add_argument("--task2-records", type=int, default=500, help="task 2: the first N records")
    p.add_argument("--task2-qps", type=float, default=20.0, help="task 2 request rate")
    p.add_argument("--task", choices=("1", "2", "both"), default="both")
    p.add_argument("--warmup", type=int, default=4, help="judge warm-up requests (not counted)")
    p.add_argument("--port", type=int, default=8835)
    p.add_argument("--out", default="", help="output folder (default: out/run-<time>)")
    p.add_argument("--start-timeout", type=float, default=900)
    args = p.parse_args(argv)
    # absolute now: the server and the judge run in other working folders
    for name in ("config", "predict_config", "dataset", "task2_dataset", "tokenizer"):
        if getattr(args, name):
            setattr(args, name, os.path.abspath(getattr(args, name)))
    args.task2_dataset = args.task2_dataset or os.path.join(os.path.dirname(args.dataset), "alpaca_521.json")
    args.out = os.path.abspath(args.out or os.path.join(ROOT, "out", time.strftime("run-%Y%m%d-%H%M%S")))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for flag, path in (("--config", args.config), ("--dataset", args.dataset), ("--tokenizer", args.tokenizer),
                       ("--task2-dataset", args.task2_dataset if args.task != "1" else "")):
        if path and not os.path.isfile(path):
            print(f"error: {flag}: file not found: {path}", file=sys.stderr)
            return 2
    port = free_port(args.port)
    if port != args.port:
        print(f"port {args.port} is taken; using {port}")
        args.port = port
    os.makedirs(args.out, exist_ok=True)
    start = time.monotonic()
    results: dict = {}
    server: Server | None = None
    try:
        if args.task in ("1", "both"):
            say(f"task 1: starting the server ({os.path.relpath(args.config, ROOT)})")
            server = Server(args, 1, os.path.join(args.out, "server_task1.log"))
            server.wait_ready(args.start_timeout)
            say(f"task 1: judge, {int(args.qps * args.test_time)} requests at X={args.qps}")
            results["task1"] = judge(args, 1, args.qps, args.test_time, os.path.join(args.out, "task1"), args.dataset)
            server.stop()
            server = None
        if args.task in ("2", "both"):
            logits = os.path.join(args.out, "file_npy")
            say("task 2: restarting the server with logits saving")
            server = Server(args, 2, os.path.join(args.out, "server_task2.log"), logits)
            server.wait_ready(args.start_timeout)
            n = args.task2_records
            say(f"task 2: judge, the first {n} records at X={args.task2_qps}")
            results["task2"] = judge(args, 2, args.task2_qps, math.ceil(n / args.task2_qps), os.path.join(args.out, "task2"),
                                     args.task2_dataset, records=n)
            server.stop()
            server = None
            say("task 2: precision (acc_allclose)")
            base = base_for(args, args.task2_dataset, n, os.path.join(args.out, "file_npy_base"))
            acc = subprocess.run([PY, os.path.join(ROOT, "performance_serving", "acc_allclose.py"),
                                  "--base_path", base, "--new_path", logits, "--worst", "3"],
                                 capture_output=True, text=True)
            print(acc.stdout + acc.stderr, end="")
            with open(os.path.join(args.out, "acc_allclose.txt"), "w") as f:
                f.write(acc.stdout + acc.stderr)
            results["precision"] = acc.stdout.splitlines()[0] if acc.stdout else acc.stderr.strip()
            if acc.returncode != 0:
                raise StepFailed(f"precision check failed: {results['precision']}")
    except StepFailed as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if server is not None:
            try:
                server.stop()
            except StepFailed:
                pass
    print(summary(args, results, time.monotonic() - start))
    return 0


def summary(args: argparse.Namespace, results: dict, seconds: float) -> str:
    lines = ["", "=" * 72, f"Main job done in {seconds:.0f} s. Outputs: {os.path.relpath(args.out, os.getcwd())}/"]
    for task in ("task1", "task2"):
        s = results.get(task)
        if not s:
            continue
        lines.append(
            f"  {task}: exec time {s['run']['exec_time_s']:.1f} s, {s['completed']} ok / {s['failed']} failed, "
            f"{s['request_throughput']:.1f} req/s, {s['output_throughput']:.0f} output tok/s")
        lines.append(
            f"         TTFT p50 {s['ttft_ms']['median']:.0f} ms p99 {s['ttft_ms']['p99']:.0f} ms; "
            f"TPOT p50 {s['tpot_ms']['median']:.1f} ms p99 {s['tpot_ms']['p99']:.1f} ms")
    if "precision" in results:
        lines.append(f"  precision: {results['precision']}")
    lines.append(f"  plots: {', '.join(os.path.relpath(p, os.getcwd()) for p in sorted(glob.glob(os.path.join(args.out, '*', 'plot_*.png'))))}")
    lines.append(f"  server logs, judge logs (testLog/), results and logits rows are in the output folder")
    lines.append("=" * 72)
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
