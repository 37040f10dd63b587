"""Shared fixtures: a tiny model on disk, serving YAMLs for it, real servers.

    tiny_model      (session) folder with a 2-layer predict YAML, its random .ckpt and tokenizer
    serving_yaml    (session) factory: serving_yaml(ladder="small", compile_cache="", **serving_config)
                    -> path of a serving YAML for the tiny model with free ports; ladders: LADDERS below
    launch          factory: launch(config_path, "--task", "1", ...) -> Launched (a running
                    `examples/start.py`); every process it started is stopped at teardown
    server          (session) one launched task-1 server of the tiny model, ready (health 200):
                    `server.url`, `server.port`, `server.config_path`, `server.tokenizer_path`

"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START_PY = os.path.join(ROOT, "llm-serving", "examples", "start.py")


def pytest_configure(config):
    # MindSpore fixes the device at its first kernel launch, and a later set_device (ModelRunner's)
    # then raises: set it before any test runs a kernel (test_checkpoint casts tensors early).
    import mindspore

    mindspore.set_device("CPU")

TINY_MODEL = dict(seq_length=256, hidden_size=64, num_layers=2, num_heads=4, n_kv_heads=2,
                  intermediate_size=176, vocab_size=32000, block_size=16)

# Compile time is ~2.5 s per graph (shape), whatever the model size: keep ladders short.
LADDERS = {
    "minimal": dict(max_generate_length=64, decode_batch_size=[1], zactivate_len=[64],
                    prefill_tokens=[64], prefill_context_factors=[1]),                  # 2 graphs
    "small": dict(max_generate_length=128, decode_batch_size=[1, 4], zactivate_len=[128],
                  prefill_tokens=[32, 64], prefill_context_factors=[1, 2]),             # 6 graphs
    "server": dict(max_generate_length=256, decode_batch_size=[1, 4, 16], zactivate_len=[128, 256],
                   prefill_tokens=[64, 128], prefill_context_factors=[1, 2]),           # 10 graphs
    "mixed": dict(max_generate_length=128, decode_batch_size=[1, 4, 16], zactivate_len=[128],
                  prefill_tokens=[32, 64], mixed_rows=24),                              # 7 graphs
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def get_free_port():
    """The `free_port` function, for tests that write their own configs."""
    return free_port


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Folder holding predict_tiny.yaml, tiny.ckpt and tokenizer.model."""
    from msllama.checkpoint import save_ckpt
    from msllama.config import load_predict_config
    from msllama.debug_data import build_tokenizer
    from msllama.weights import random_weights

    folder = str(tmp_path_factory.mktemp("tiny_model"))
    arch = {k: v for k, v in TINY_MODEL.items() if k != "block_size"}
    predict = {
        "context": {"mode": 0, "device_target": "CPU", "device_id": 0},
        "model": {"model_config": {"type": "LlamaConfig", **arch, "compute_dtype": "float32",
                                   "block_size": TINY_MODEL["block_size"], "num_blocks": 320,
                                   "checkpoint_name_or_path": "tiny.ckpt"}},
        "processor": {"tokenizer": {"vocab_file": "tokenizer.model"}},
    }
    path = os.path.join(folder, "predict_tiny.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(predict, f)
    save_ckpt(random_weights(load_predict_config(path).model, seed=0), os.path.join(folder, "tiny.ckpt"))
    build_tokenizer(os.path.join(folder, "tokenizer.model"))
    return folder


def write_serving_yaml(folder: str, tiny_model: str, ladder: str = "small", compile_cache: str = "",
                       **serving_config) -> str:
    lad = dict(LADDERS[ladder], compile_cache=compile_cache)
    data = {
        "model_config": {"model_name": "llama2",
                         "model_cfg_path": os.path.join(tiny_model, "predict_tiny.yaml"),
                         "max_generate_length": lad.pop("max_generate_length"), "end_token": 2,
                         "vocab_size": TINY_MODEL["vocab_size"], "prefill_batch_size": [16],
                         "decode_batch_size": lad.pop("decode_batch_size"),
                         "zactivate_len": lad.pop("zactivate_len")},
        "serving_config": {"server_ip": "127.0.0.1", "server_port": free_port(), "agent_ports": [free_port()],
                           "max_queue_size": 256, "drain_seconds": 5, **serving_config},
        "pa_config": {"num_blocks": 320, "block_size": TINY_MODEL["block_size"]},
        "scheduler_config": lad,
        "tokenizer": {"type": "LlamaTokenizer", "vocab_file": os.path.join(tiny_model, "tokenizer.model")},
    }
    path = os.path.join(folder, "serving.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(data, f)
    return path


@pytest.fixture(scope="session")
def serving_yaml(tiny_model: str, tmp_path_factory: pytest.TempPathFactory):
    def make(ladder: str = "small", compile_cache: str = "", **serving_config) -> str:
        return write_serving_yaml(str(tmp_path_factory.mktemp("serving")), tiny_model, ladder, compile_cache,
                                  **serving_config)
    return make


@dataclass
class Launched:
    """A running `examples/start.py`; its merged stdout/stderr lines collect in `lines`."""
    proc: subprocess.Popen
    config_path: str
    lines: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 180.0) -> re.Match:
        """The first output line matching `pattern`; fails with the output if the process ends first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                m = re.search(pattern, line)
                if m:
                    return m
            if self.proc.poll() is not None:
                self._reader.join(timeout=2)
                if not any(re.search(pattern, line) for line in self.lines):
                    pytest.fail(f"server exited ({self.proc.returncode}) before printing {pattern!r}:\n"
                                f"{self.output}")
            time.sleep(0.1)
        pytest.fail(f"no line matching {pattern!r} within {timeout:.0f} s:\n{self.output}")

    def stop(self, sig: int = signal.SIGINT, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=5)
        return self.proc.returncode


def _launcher(config_path: str, *args: str) -> Launched:
    proc = subprocess.Popen([sys.executable, START_PY, "--config", config_path, *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    return Launched(proc, config_path)


@pytest.fixture
def launch():
    started: list[Launched] = []

    def start(config_path: str, *args: str) -> Launched:
        started.append(_launcher(config_path, *args))
        return started[-1]
    yield start
    for s in started:
        s.stop()


@dataclass
class RunningServer:
    url: str
    port: int
    config_path: str
    tokenizer_path: str
    launched: Launched


@pytest.fixture(scope="session")
def server(tiny_model: str, tmp_path_factory: pytest.TempPathFactory):
    port = free_port()
    path = write_serving_yaml(str(tmp_path_factory.mktemp("server")), tiny_model, "server", server_port=port)
    launched = _launcher(path, "--task", "1")
    try:
        launched.wait_for(r"^Serving .* at http://")
        yield RunningServer(f"http://127.0.0.1:{port}", port, path, os.path.join(tiny_model, "tokenizer.model"),
                            launched)
    finally:
        launched.stop()
