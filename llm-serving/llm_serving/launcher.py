"""Server launcher: config -> model agents -> engine -> HTTP app, in the foreground until a signal.

    python examples/start.py --task 1|2 --config <serving yaml> [--host H] [--port P] [--save-logits-dir D]

Task 2 saves next-token logits rows for the precision check into --save-logits-dir, else the
config's serving_config.save_logits_dir, else ./file_npy; task 1 saves none. Once /health answers
200 it prints "Serving <model> at http://host:port (task N)".

When an agent dies it prints which one and why; the server stays up answering 503 (with the
reason on /health) until it is stopped, so that clients and health checks see the failure.

Exit codes: 0 after SIGINT/SIGTERM (no new requests, in-flight ones finish or are aborted within
serving_config.drain_seconds, agents stopped, shared memory unlinked); 1 when start-up fails or an
agent died while serving (after the same clean stop); 2 for a bad config or flag.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
import threading
import time
import urllib.request

from msllama.config import ConfigError

from .config import ServingConfig, load_serving_config
from .worker import AgentDiedError, Worker

DEFAULT_LOGITS_DIR = "./file_npy"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Llama-2 server (contest-compatible HTTP API)")
    p.add_argument("--task", type=int, choices=(1, 2), default=1,
                   help="1: speed (no logits saved); 2: precision (saves logits rows)")
    p.add_argument("--config", required=True, help="serving YAML, e.g. configs/llama/llama_7b_kbk_pa_dyn.yaml")
    p.add_argument("--host", help="overrides serving_config.server_ip")
    p.add_argument("--port", type=int, help="overrides serving_config.server_port")
    p.add_argument("--tokenizer", help="overrides tokenizer.vocab_file (a sentencepiece tokenizer.model)")
    p.add_argument("--save-logits-dir", help=f"task 2: folder for logits rows (default: the config's, else "
                                             f"{DEFAULT_LOGITS_DIR})")
    return p.parse_args(argv)


def configure(args: argparse.Namespace) -> ServingConfig:
    """The config file with the command line's overrides; ConfigError names the key or flag."""
    config = load_serving_config(args.config)
    changes: dict = {}
    if args.host is not None:
        changes["host"] = args.host
    if args.port is not None:
        if not 0 < args.port < 65536:
            raise ConfigError(f"flag '--port': must be in 1..65535, got {args.port}")
        changes["port"] = args.port
    if args.tokenizer is not None:
        if not os.path.isfile(args.tokenizer):
            raise ConfigError(f"flag '--tokenizer': file not found: {args.tokenizer}")
        changes["predict"] = config.predict.replace(tokenizer=os.path.abspath(args.tokenizer))
    if args.task == 2:
        folder = args.save_logits_dir or config.save_logits_dir or DEFAULT_LOGITS_DIR
        changes["save_logits_dir"] = os.path.abspath(folder)
    elif args.save_logits_dir:
        raise ConfigError("flag '--save-logits-dir': only with --task 2")
    else:
        changes["save_logits_dir"] = ""
    return dataclasses.replace(config, **changes)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = configure(args)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    return Launcher(config, args.task).run()


class _Interrupted(BaseException):
    """SIGINT/SIGTERM during start-up (a BaseException: library code must not swallow it)."""


class Launcher:
    def __init__(self, config: ServingConfig, task: int):
        self.config, self.task = config, task
        self.server = None          # uvicorn.Server once serving
        self._interrupted = False

    def run(self) -> int:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        worker = Worker(self.config)
        try:
            from msllama.tokenizer import Tokenizer
            tokenizer = Tokenizer(self.config.tokenizer_path)    # before the long warm-up: fail fast
            start = time.monotonic()
            worker.start(_ProgressLine(len(self.config.agent_ports)))
            print(f"model ready in {time.monotonic() - start:.1f} s (agent pids {worker.pids})", flush=True)
            return self._serve(worker, tokenizer)
        except _Interrupted:
            print("interrupted during start-up", file=sys.stderr)
            return 0
        except AgentDiedError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        except Exception as e:
            print(f"error: start-up failed: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
        finally:
            worker.shutdown()
            if self.server is not None:
                print("server stopped: agents stopped, shared memory removed", flush=True)

    def _on_signal(self, signum: int, frame) -> None:
        if self.server is None:
            if not self._interrupted:   # a second signal must not cut the clean-up short
                self._interrupted = True
                raise _Interrupted()
            return
        # uvicorn handles signals while it runs and re-raises them when it is done: then, and
        # for a signal that arrives between the two, this just asks the server to stop.
        self.server.should_exit = True

    def _serve(self, worker: Worker, tokenizer) -> int:
        import uvicorn

        from .api.app import create_app
        from .engine import AsyncEngine
        from .metrics import Metrics

        config = self.config
        engine = AsyncEngine(config, worker, tokenizer, Metrics())
        engine.start()
        try:
            self.server = uvicorn.Server(uvicorn.Config(
                create_app(engine), host=config.host, port=config.port, log_level="warning",
                timeout_graceful_shutdown=config.drain_seconds))
            watcher = _Watcher(self, worker)
            watcher.start()
            try:
                self.server.run()
            except SystemExit:      # uvicorn could not start (e.g. the port is taken); it logged why
                return 1
            finally:
                watcher.stop()
            return 1 if watcher.failure else 0
        finally:
            # uvicorn has already drained the HTTP side for drain_seconds: what is left in the
            # engine has no client any more, so it is aborted at once.
            engine.shutdown(0.0)

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.config.port}"


class _Watcher(threading.Thread):
    """Announces the server once /health answers 200; reports an agent's death once."""

    def __init__(self, launcher: Launcher, worker: Worker):
        super().__init__(name="launcher-watch", daemon=True)
        self.launcher, self.worker = launcher, worker
        self.failure: AgentDiedError | None = None
        self._finished = threading.Event()

    def stop(self) -> None:
        self._finished.set()
        self.join(timeout=5)

    def run(self) -> None:
        config = self.launcher.config
        host = "127.0.0.1" if config.host in ("0.0.0.0", "::", "") else config.host
        health = f"http://{host}:{config.port}/health"
        announced = False
        while not self._finished.wait(0.2):
            if not announced and _answers_200(health):
                print(f"Serving {config.model_name} at {self.launcher.url} (task {self.launcher.task})",
                      flush=True)
                announced = True
            dead = self.worker.dead_agent()
            if dead is not None:
                print(f"error: {dead}; the server answers 503 until it is stopped", file=sys.stderr, flush=True)
                self.failure = dead
                return


def _answers_200(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as r:
            return r.status == 200
    except OSError:
        return False


class _ProgressLine:
    """Warm-up progress: one rewritten line on a terminal, one line per graph otherwise."""

    def __init__(self, agents: int):
        self.tty = sys.stdout.isatty()
        self.multi = agents > 1

    def __call__(self, rank: int, i: int, n: int, label: str) -> None:
        who = f"agent {rank}: " if self.multi else ""
        if label == "done":
            text = f"{who}compiled {n} graphs"
        else:
            text = f"{who}compiling {i + 1}/{n} {label}" if n else f"{who}{label}"
        if self.tty:
            print(f"\r\033[K{text}", end="\n" if label == "done" else "", flush=True)
        else:
            print(text, flush=True)
