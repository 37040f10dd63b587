"""Engine-side client of the model agents: spawns them, sends each step, collects its outputs.

    worker = Worker(config)
    worker.start(progress)          # spawn, connect, relay warm-up progress, return when all READY
    worker.submit(step); ...; out = worker.collect()      # or worker.execute(step)
    worker.shutdown()               # idempotent; also after a crash

`submit`/`collect` are called from one thread (the engine's). Waiting for answers polls the agent
processes, so a dead agent raises `AgentDiedError` within a fraction of a second of its exit, with
the exit status in the reason. A step that raised inside an agent raises `StepFailedError`; the
agents keep serving. `alive`/`dead_agent` may be called from any thread.

The agents are children of the thread that calls `start`, and PR_SET_PDEATHSIG fires when that
thread ends: call `start` from a thread that lives as long as the server (the main thread).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from typing import Callable, Iterator

from msllama.runner import StepInput, StepOutput

from .config import ServingConfig
from .transport import (Msg, SharedStep, StepHeader, StepLimits, decode_json, encode_message, recv_message,
                        remove_stale_segments, send_message, unpack_done, unpack_failed)

log = logging.getLogger("llm_serving.worker")

CONNECT_TIMEOUT = 60.0      # seconds for an agent to open its port
POLL_SECONDS = 0.2          # while waiting for agents, how often their processes are checked
EXIT_WAIT = 2.0             # after a connection drops, how long to wait for the exit status
STDERR_TAIL = 20            # agent output lines kept for error messages

Progress = Callable[[int, int, int, str], None]     # (rank, i, n, label); n = 0: no count


class AgentDiedError(RuntimeError):
    """An agent process exited or its connection broke: the model is gone."""

    def __init__(self, rank: int, reason: str, pid: int | None = None, output_tail: str = ""):
        self.rank, self.reason, self.pid, self.output_tail = rank, reason, pid, output_tail
        who = f"agent {rank}" + (f" (pid {pid})" if pid else "")
        super().__init__(f"{who} died: {reason}" + (f"\n{output_tail}" if output_tail else ""))


class StepFailedError(RuntimeError):
    """A step raised inside an agent (a bug, not bad user input); the agents keep serving."""


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "connection lost while the process still runs"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "unknown signal"
        return f"killed by signal {-returncode} ({name})"
    return f"exit code {returncode}"


class _Agent:
    def __init__(self, rank: int, port: int, proc: subprocess.Popen):
        self.rank, self.port, self.proc = rank, port, proc
        self.sock: socket.socket | None = None
        self.said_hello = False
        self.ready = False
        self.tail: deque[str] = deque(maxlen=STDERR_TAIL)
        self.reader = threading.Thread(target=self._read_output, name=f"agent{rank}-output", daemon=True)
        self.reader.start()

    def _read_output(self) -> None:
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            log.debug("agent %d: %s", self.rank, line)
            # MindSpore's routine warnings would push the real error out of the tail
            if line and not line.startswith(("[WARNING]", "[INFO]")):
                self.tail.append(line)

    def output_tail(self) -> str:
        self.reader.join(timeout=1.0)
        return "\n".join(self.tail)


class Worker:
    def __init__(self, config: ServingConfig):
        if not config.source:
            raise ValueError("Worker: the serving config must be loaded from a file (ServingConfig.source): "
                             "the agents load the same file")
        self.config = config
        self.limits = StepLimits.for_config(config)
        self.last_compute_seconds = 0.0     # the agents' model time of the last collected step
        self._agents: list[_Agent] = []
        self._shared: SharedStep | None = None
        self._selector = selectors.DefaultSelector()
        self._inflight: StepHeader | None = None
        self._step_id = 0
        self._failure: AgentDiedError | None = None
        self._started = self._closed = False

    @property
    def pids(self) -> list[int]:
        return [a.proc.pid for a in self._agents]

    @property
    def shm_prefix(self) -> str:
        return self._shared.prefix if self._shared else ""

    # ---- start ---------------------------------------------------------------------------------
    def start(self, progress: Progress | None = None) -> None:
        if self._started:
            raise RuntimeError("Worker.start: already started")
        self._started = True
        removed = remove_stale_segments()
        if removed:
            log.warning("removed shared memory left by dead servers: %s", ", ".join(removed))
        try:
            self._shared = SharedStep.create(SharedStep.new_prefix(), self.limits)
            self._agents = [self._spawn(rank, port) for rank, port in enumerate(self.config.agent_ports)]
            for agent in self._agents:
                self._connect(agent)
            self._await_ready(progress)
        except BaseException:
            self.shutdown()
            raise

    def _spawn(self, rank: int, port: int) -> _Agent:
        import llm_serving
        import msllama

        roots = [os.path.dirname(os.path.dirname(os.path.abspath(m.__file__))) for m in (llm_serving, msllama)]
        env = dict(os.environ, PYTHONUNBUFFERED="1",
                   PYTHONPATH=os.pathsep.join(roots + [p for p in [os.environ.get("PYTHONPATH")] if p]))
        cmd = [sys.executable, "-m", "llm_serving.agent", "--config", self.config.source, "--rank", str(rank),
               "--port", str(port), "--shm", self._shared.prefix, "--parent-pid", str(os.getpid())]
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, env=env)
        return _Agent(rank, port, proc)

    def _connect(self, agent: _Agent) -> None:
        deadline = time.monotonic() + CONNECT_TIMEOUT
        while True:
            if agent.proc.poll() is not None:
                raise self._died(agent)
            try:
                sock = socket.create_connection(("127.0.0.1", agent.port), timeout=1.0)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"agent {agent.rank} (pid {agent.proc.pid}) did not open port "
                                       f"{agent.port} within {CONNECT_TIMEOUT:.0f} s") from None
                time.sleep(0.05)
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        agent.sock = sock
        self._selector.register(sock, selectors.EVENT_READ, agent)

    def _await_ready(self, progress: Progress | None) -> None:
        waiting = {a.rank for a in self._agents}
        for agent, kind, payload in self._messages():
            if kind is Msg.HELLO:
                self._check_hello(agent, decode_json(payload))
            elif kind is Msg.PROGRESS and agent.said_hello:
                if progress:
                    p = decode_json(payload)
                    progress(agent.rank, p["i"], p["n"], p["label"])
            elif kind is Msg.READY and agent.said_hello:
                log.info("agent %d ready (warm-up %.1f s)", agent.rank, decode_json(payload)["warmup_seconds"])
                agent.ready = True
                waiting.discard(agent.rank)
                if not waiting:
                    return
            else:
                raise self._protocol_error(agent, f"sent {kind.name} while loading")

    def _check_hello(self, agent: _Agent, hello: dict) -> None:
        if hello.get("pid") != agent.proc.pid:
            raise RuntimeError(f"port {agent.port} (serving_config.agent_ports[{agent.rank}]) is answered by "
                               f"another process (pid {hello.get('pid')}), not the agent this worker started")
        mine = dataclasses.asdict(self.limits)
        if hello.get("limits") != mine:
            raise RuntimeError(f"agent {agent.rank} read {self.config.source} with other step limits "
                               f"({hello.get('limits')} vs {mine}): did the file change?")
        agent.said_hello = True

    # ---- steps ---------------------------------------------------------------------------------
    def submit(self, step: StepInput) -> None:
        """Write the step into shared memory and send it to every agent."""
        if self._failure is not None:
            raise self._failure
        if not self._agents or self._closed:
            raise RuntimeError("Worker.submit: the worker is not running (start() it first)")
        if self._inflight is not None:
            raise RuntimeError("Worker.submit: collect() the previous step first")
        self._step_id += 1
        header = self._shared.write_step(step, self._step_id)
        frame = encode_message(Msg.STEP, header.pack())
        for agent in self._agents:
            try:
                agent.sock.sendall(frame)
            except OSError:
                raise self._died(agent) from None
        self._inflight = header

    def collect(self) -> StepOutput:
        """Wait for every agent's answer to the submitted step; rank 0's outputs (copies)."""
        header, self._inflight = self._inflight, None
        if header is None:
            raise RuntimeError("Worker.collect: no step was submitted")
        pending, failures, compute = len(self._agents), [], 0.0
        for agent, kind, payload in self._messages():
            if kind is Msg.DONE:
                step_id, seconds = unpack_done(payload)
                compute = max(compute, seconds)
            elif kind is Msg.FAILED:
                step_id, error = unpack_failed(payload)
                failures.append(f"agent {agent.rank}: {error}")
            else:
                raise self._protocol_error(agent, f"sent {kind.name} during a step")
            if step_id != header.step_id:
                raise self._protocol_error(agent, f"answered step {step_id}, expected {header.step_id}")
            pending -= 1
            if not pending:
                break
        self.last_compute_seconds = compute
        if failures:
            raise StepFailedError(f"step {header.step_id} failed: " + "; ".join(failures))
        return self._shared.read_output(header)

    def execute(self, step: StepInput) -> StepOutput:
        self.submit(step)
        return self.collect()

    def _messages(self) -> Iterator[tuple[_Agent, Msg, bytes]]:
        """Messages from the agents as they arrive; raises AgentDiedError when one dies."""
        while True:
            events = self._selector.select(POLL_SECONDS)
            for key, _ in events:
                agent: _Agent = key.data
                try:
                    kind, payload = recv_message(agent.sock)
                except OSError:         # includes ConnectionClosed
                    raise self._died(agent) from None
                if kind is Msg.ERROR:
                    raise self._died(agent, decode_json(payload).get("error", ""))
                yield agent, kind, payload
            if not events:
                for agent in self._agents:
                    if agent.proc.poll() is not None:
                        raise self._died(agent)

    # ---- failures ------------------------------------------------------------------------------
    def _died(self, agent: _Agent, error: str = "") -> AgentDiedError:
        try:
            code = agent.proc.wait(timeout=EXIT_WAIT)
        except subprocess.TimeoutExpired:
            code = None
        reason = describe_exit(code)
        # A signal or the agent's own error text says it all; otherwise its last output lines explain.
        tail = agent.output_tail() if code is not None and code > 0 and not error else ""
        err = AgentDiedError(agent.rank, f"{error} ({reason})" if error else reason, agent.proc.pid, tail)
        if self._failure is None:
            self._failure = err
        return err

    def _protocol_error(self, agent: _Agent, detail: str) -> AgentDiedError:
        """The conversation is out of step: this agent is unusable (shutdown() kills it)."""
        err = AgentDiedError(agent.rank, f"protocol error: {detail}", agent.proc.pid)
        if self._failure is None:
            self._failure = err
        return err

    def dead_agent(self) -> AgentDiedError | None:
        """Why the model is gone, or None while every agent runs (None after shutdown too)."""
        if self._closed:
            return None
        if self._failure is not None:
            return self._failure
        for agent in self._agents:
            code = agent.proc.poll()
            if code is not None:
                return AgentDiedError(agent.rank, describe_exit(code), agent.proc.pid)
        return None

    def alive(self) -> bool:
        return bool(self._agents) and not self._closed and self.dead_agent() is None

    # ---- shutdown ------------------------------------------------------------------------------
    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop the agents and unlink the shared memory. Idempotent.

        Ready agents get SHUTDOWN, loading ones SIGTERM; any still running after `timeout` seconds
        gets SIGTERM, then SIGKILL."""
        if self._closed:
            return
        self._closed = True
        for agent in self._agents:
            if not agent.ready:     # still loading: it reads no messages until it is done
                agent.proc.terminate()
            elif agent.sock is not None:
                try:
                    send_message(agent.sock, Msg.SHUTDOWN)
                except OSError:
                    pass
        deadline = time.monotonic() + timeout
        for agent in self._agents:
            _stop(agent.proc, max(0.0, deadline - time.monotonic()))
            if agent.sock is not None:
                agent.sock.close()
            agent.reader.join(timeout=1.0)
        self._selector.close()
        if self._shared is not None:
            self._shared.close()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()


def _stop(proc: subprocess.Popen, grace: float) -> None:
    try:
        proc.wait(timeout=grace)
        return
    except subprocess.TimeoutExpired:
        proc.terminate()
    try:
        proc.wait(timeout=2.0)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
