"""Agent process: owns the model (weights, KV cache, compiled graphs) and runs the steps it is sent.

    python -m llm_serving.agent --config <serving yaml> --rank R --port P --shm <prefix> [--parent-pid PID]

Started by `Worker.start` (protocol: `llm_serving.transport`). It listens on 127.0.0.1:P for the
one worker connection, attaches the worker's shared memory, says HELLO, loads and compiles the
model with PROGRESS messages, says READY, then answers every STEP with DONE or FAILED (a step
that raises does not end the agent).

Lifetime: it ignores SIGINT (the launcher owns Ctrl-C and sends SHUTDOWN), exits on SHUTDOWN or
when the connection drops, and on Linux is killed with its parent (PR_SET_PDEATHSIG), so it never
outlives the server.
"""
from __future__ import annotations

import argparse
import ctypes
import dataclasses
import os
import signal
import socket
import sys
import time
import traceback

# Absolute imports: with MindSpore's compile cache on, MindSpore parses the entry script (this
# file) for its imports and cannot resolve relative ones (ImportError at the first compile).
from llm_serving.config import ServingConfig, load_serving_config
from llm_serving.transport import (ConnectionClosed, Msg, SharedStep, StepHeader, StepLimits, pack_done,
                                   pack_failed, recv_message, send_json, send_message)

ACCEPT_TIMEOUT = 60.0       # seconds to wait for the worker to connect
_PR_SET_PDEATHSIG = 1


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not _die_with_parent(args.parent_pid):
        return 1
    try:
        conn = _accept_worker(args.port)
    except OSError as e:
        print(f"agent {args.rank}: {e}", file=sys.stderr)
        return 1
    with conn:
        try:
            return _Agent(conn, args.rank).run(args.config, args.shm)
        except ConnectionError:     # the worker is gone: nothing left to serve
            return 0


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m llm_serving.agent",
                                description="model agent (started by the worker)")
    p.add_argument("--config", required=True, help="serving YAML (the one the worker loaded)")
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--port", type=int, required=True, help="TCP port to listen on (127.0.0.1)")
    p.add_argument("--shm", required=True, help="shared memory name prefix created by the worker")
    p.add_argument("--parent-pid", type=int, default=0, help="exit at once if this process is gone")
    return p.parse_args(argv)


def _die_with_parent(parent_pid: int) -> bool:
    """Ask the kernel to SIGKILL us when the parent dies; False if it already has."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    # The parent may have died before prctl took effect: we were re-parented already.
    return not parent_pid or os.getppid() == parent_pid


def _accept_worker(port: int) -> socket.socket:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind(("127.0.0.1", port))
        except OSError as e:
            raise OSError(f"cannot listen on 127.0.0.1:{port} (serving_config.agent_ports): "
                          f"{e.strerror}") from None
        listener.listen(1)
        listener.settimeout(ACCEPT_TIMEOUT)
        try:
            conn, _ = listener.accept()
        except socket.timeout:
            raise OSError(f"no worker connected to port {port} within {ACCEPT_TIMEOUT:.0f} s") from None
    conn.settimeout(None)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return conn


class _Agent:
    def __init__(self, conn: socket.socket, rank: int):
        self.conn, self.rank = conn, rank

    def run(self, config_path: str, shm_prefix: str) -> int:
        try:
            config = load_serving_config(config_path)
            limits = StepLimits.for_config(config)
            shared = SharedStep.attach(shm_prefix, limits)
        except Exception as e:
            return self._fatal(e, 2)
        try:
            send_json(self.conn, Msg.HELLO, {"rank": self.rank, "pid": os.getpid(),
                                             "limits": dataclasses.asdict(limits)})
            try:
                runner = self._load(config)
            except Exception as e:
                return self._fatal(e, 1)
            return self._serve(runner, shared)
        finally:
            shared.close()

    def _load(self, config: ServingConfig):
        from msllama.runner import runner_from_config

        self._progress(0, 0, "loading weights")
        predict = config.predict.replace(device_id=config.start_device_id + self.rank)
        runner = runner_from_config(predict, config.ladder)
        seconds = runner.warmup(self._progress)
        send_json(self.conn, Msg.READY, {"warmup_seconds": seconds})
        return runner

    def _progress(self, i: int, n: int, label: str) -> None:
        send_json(self.conn, Msg.PROGRESS, {"i": i, "n": n, "label": label})

    def _serve(self, runner, shared: SharedStep) -> int:
        while True:
            try:
                kind, payload = recv_message(self.conn)
            except ConnectionClosed:
                return 0
            if kind is Msg.SHUTDOWN:
                return 0
            if kind is not Msg.STEP:
                return self._fatal(RuntimeError(f"unexpected {kind.name} message while serving"), 1)
            header = StepHeader.unpack(payload)
            try:
                step = shared.read_step(header)
                start = time.perf_counter()
                out = runner.step(step)
                seconds = time.perf_counter() - start
                if self.rank == 0:
                    shared.write_output(header, out)
            except Exception as e:
                traceback.print_exc()
                send_message(self.conn, Msg.FAILED, pack_failed(header.step_id, f"{type(e).__name__}: {e}"))
            else:
                send_message(self.conn, Msg.DONE, pack_done(header.step_id, seconds))

    def _fatal(self, error: Exception, code: int) -> int:
        traceback.print_exception(type(error), error, error.__traceback__)
        try:
            send_json(self.conn, Msg.ERROR, {"error": f"{type(error).__name__}: {error}"})
        except ConnectionError:
            pass
        return code


if __name__ == "__main__":
    sys.exit(main())
