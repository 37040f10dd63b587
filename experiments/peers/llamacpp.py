"""Start llama.cpp's `llama-server` on a GGUF file and read greedy tokens with full log-probabilities.

`build_llamacpp.sh` leaves the binary at build/bin/llama-server (override: $LLAMA_SERVER).
Log-probabilities come from `/completion` with `n_probs` = vocab size and `post_sampling_probs`
false: the server then reports log-softmax of the raw logits over the whole vocabulary (computed
in float32), i.e. the logits up to a per-row constant.
"""
from __future__ import annotations

import os
import socket
import subprocess
import time
from dataclasses import dataclass, field

import numpy as np
import requests

DEFAULT_BINARY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "build", "bin", "llama-server")

# Settings under which llama.cpp computes what a float64 reference computes (see README.md):
# flash attention off and an f32 KV cache. llama.cpp's defaults are `-fa auto -ctk f16 -ctv f16`.
EXACT_FLAGS = ("-fa", "off", "-ctk", "f32", "-ctv", "f32")


def server_binary() -> str:
    return os.environ.get("LLAMA_SERVER", DEFAULT_BINARY)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LlamaServer:
    """A llama-server subprocess on 127.0.0.1; use as a context manager."""
    model: str
    flags: tuple[str, ...] = EXACT_FLAGS
    ctx_size: int = 2048
    parallel: int = 1
    threads: int = 2
    log_path: str = os.devnull
    startup_timeout: float = 60.0
    port: int = field(default_factory=_free_port)

    def __post_init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._log = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "LlamaServer":
        binary = server_binary()
        if not os.access(binary, os.X_OK):
            raise FileNotFoundError(f"llama-server binary {binary!r} not found: run build_llamacpp.sh")
        cmd = [binary, "-m", self.model, "--host", "127.0.0.1", "--port", str(self.port),
               "-c", str(self.ctx_size), "-np", str(self.parallel), "-t", str(self.threads),
               "--no-webui", *self.flags]
        self._log = open(self.log_path, "ab")
        self._proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"llama-server exited with code {self._proc.returncode} "
                                   f"(log: {self.log_path}); command: {' '.join(cmd)}")
            try:
                if requests.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"llama-server not healthy after {self.startup_timeout} s (log: {self.log_path})")

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> "LlamaServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def greedy(self, prompt_ids: list[int], max_tokens: int) -> list[int]:
        """Greedy continuation of a token-id prompt (sent as ids: no tokenizer, no extra BOS)."""
        body = {"prompt": prompt_ids, "n_predict": max_tokens, "temperature": 0.0, "ignore_eos": True,
                "return_tokens": True, "cache_prompt": False}
        resp = requests.post(self.url + "/completion", json=body, timeout=600)
        resp.raise_for_status()
        return resp.json()["tokens"]

    def next_logprobs(self, ids: list[int], vocab_size: int, never_sample: list[int]) -> np.ndarray:
        """Log-softmax over the whole vocabulary of the logits after `ids`.

        The server only reports probabilities for a drawn token that ends a complete UTF-8
        character, so a lone byte token would lose its row: `never_sample` (the byte tokens)
        is banned through logit_bias, which acts on the sampler, not on the reported logits.
        """
        body = {"prompt": ids, "n_predict": 1, "temperature": 0.0, "n_probs": vocab_size,
                "post_sampling_probs": False, "logit_bias": [[t, False] for t in never_sample]}
        resp = requests.post(self.url + "/completion", json=body, timeout=600)
        resp.raise_for_status()
        (step,) = resp.json()["completion_probabilities"]
        row = np.full(vocab_size, -np.inf)
        for entry in step["top_logprobs"]:
            row[entry["id"]] = entry["logprob"]
        return row

    def teacher_forced_logprobs(self, prompt_ids: list[int], continuation: list[int], vocab_size: int,
                                never_sample: list[int]) -> np.ndarray:
        """[len(continuation), vocab]: row i is the distribution continuation[i] was drawn from.

        One request per step; the server's prompt cache makes each one decode a single token.
        """
        return np.stack([self.next_logprobs(prompt_ids + continuation[:i], vocab_size, never_sample)
                         for i in range(len(continuation))])


def byte_tokens(gguf_path: str) -> list[int]:
    """Ids of the GGUF vocabulary's byte-fallback pieces (<0x00> ... <0xFF>)."""
    import gguf

    types = gguf.GGUFReader(gguf_path).fields["tokenizer.ggml.token_type"].contents()
    return [i for i, t in enumerate(types) if t == gguf.TokenType.BYTE]
