"""Worker <-> agent transport: TCP framing for commands, named shared memory for step arrays.

Connection: one TCP connection per agent. The agent listens on 127.0.0.1 at
`serving_config.agent_ports[rank]`; the worker connects (retrying while the agent boots).
Every message is framed as

    u32 little-endian payload length | u8 message type | payload

    HELLO     agent -> worker  JSON {"rank", "pid", "limits"}   after it attached shared memory
    PROGRESS  agent -> worker  JSON {"i", "n", "label"}         n = 0: a stage without a count
    READY     agent -> worker  JSON {"warmup_seconds"}          model loaded, every shape compiled
    ERROR     agent -> worker  JSON {"error"}                   fatal; the agent exits after it
    STEP      worker -> agent  StepHeader (struct, below)       the arrays are in shared memory
    DONE      agent -> worker  u64 step id, f64 compute seconds (the model step alone)
    FAILED    agent -> worker  u64 step id, UTF-8 error text    that step raised; agent stays up
    SHUTDOWN  worker -> agent  empty                            exit now

The agent also exits when the connection drops. Every STEP goes to every agent; rank 0 writes the
outputs, the others only answer. One step is in flight at a time.

Shared memory: two named segments created by the worker, `<prefix>_in` (step inputs) and
`<prefix>_out` (outputs), with prefix `llmsrv_<worker pid>_<random hex>`. Both are sized once, for
the largest step the config allows (`StepLimits`); every array lives at a fixed 64-byte aligned
offset, and a step uses the first n entries of each (`block_tables` the first S * W, row-major
[S, W]). Nothing is pickled or formatted per step. Agents attach without the resource tracker
owning the segments; only the worker unlinks them. Segments whose creating pid is dead (a worker
killed with SIGKILL) are removed by `remove_stale_segments` when the next worker starts.
"""
from __future__ import annotations

import enum
import json
import os
import re
import secrets
import socket
import struct
import sys
from dataclasses import dataclass
from multiprocessing import resource_tracker
from multiprocessing.shared_memory import SharedMemory

import numpy as np

from msllama.runner import StepInput, StepOutput
from msllama.sampling import SamplingBatch

from .config import ServingConfig

SHM_PREFIX = "llmsrv_"
SHM_DIR = "/dev/shm"
_ALIGN = 64
_MAX_MESSAGE = 1 << 20      # control messages are small; anything bigger is a framing error


class Msg(enum.IntEnum):
    HELLO = 1
    PROGRESS = 2
    READY = 3
    ERROR = 4
    STEP = 5
    DONE = 6
    FAILED = 7
    SHUTDOWN = 8


class ConnectionClosed(ConnectionError):
    """The peer closed the connection (or sent something that is not our protocol)."""


# ---- framing -----------------------------------------------------------------------------------

_FRAME = struct.Struct("<IB")
_DONE = struct.Struct("<Qd")
_STEP_ID = struct.Struct("<Q")


def encode_message(kind: Msg, payload: bytes = b"") -> bytes:
    return _FRAME.pack(len(payload), kind) + payload


def send_message(sock: socket.socket, kind: Msg, payload: bytes = b"") -> None:
    sock.sendall(encode_message(kind, payload))


def send_json(sock: socket.socket, kind: Msg, obj: dict) -> None:
    send_message(sock, kind, json.dumps(obj).encode())


def recv_message(sock: socket.socket) -> tuple[Msg, bytes]:
    length, kind = _FRAME.unpack(_recv_exact(sock, _FRAME.size))
    if length > _MAX_MESSAGE:
        raise ConnectionClosed(f"message of {length} bytes: not this protocol")
    try:
        msg = Msg(kind)
    except ValueError:
        raise ConnectionClosed(f"unknown message type {kind}: not this protocol") from None
    return msg, _recv_exact(sock, length) if length else b""


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            raise ConnectionClosed("connection closed by the peer")
        got += k
    return bytes(buf)


def decode_json(payload: bytes) -> dict:
    return json.loads(payload.decode())


def pack_done(step_id: int, compute_seconds: float) -> bytes:
    return _DONE.pack(step_id, compute_seconds)


def unpack_done(payload: bytes) -> tuple[int, float]:
    return _DONE.unpack(payload)


def pack_failed(step_id: int, error: str) -> bytes:
    return _STEP_ID.pack(step_id) + error.encode("utf-8", "replace")


def unpack_failed(payload: bytes) -> tuple[int, str]:
    return _STEP_ID.unpack_from(payload)[0], payload[_STEP_ID.size:].decode("utf-8", "replace")


@dataclass(frozen=True)
class StepHeader:
    """The STEP payload: which step and how many entries of each shared array it uses."""
    step_id: int
    is_prefill: bool
    all_greedy: bool        # no sampling arrays were written: every row is plain argmax
    n_tokens: int           # N
    n_seqs: int             # S
    n_sample: int           # K
    n_rows: int             # R logits rows
    width: int              # W block-table columns
    n_history: int          # H repetition-penalty history ids

    _STRUCT = struct.Struct("<Q2B6I")

    def pack(self) -> bytes:
        return self._STRUCT.pack(self.step_id, self.is_prefill, self.all_greedy, self.n_tokens, self.n_seqs,
                                 self.n_sample, self.n_rows, self.width, self.n_history)

    @classmethod
    def unpack(cls, payload: bytes) -> StepHeader:
        v = cls._STRUCT.unpack(payload)
        return cls(v[0], bool(v[1]), bool(v[2]), *v[3:])


# ---- shared memory layout ----------------------------------------------------------------------

@dataclass(frozen=True)
class StepLimits:
    """Capacity of every shared array: the largest step the config can produce."""
    max_tokens: int         # new tokens in a step: the largest prefill budget or decode batch
    max_seqs: int
    max_width: int          # blocks per sequence
    max_sample: int
    max_rows: int           # logits rows (task 2)
    max_history: int
    vocab: int

    @classmethod
    def for_config(cls, config: ServingConfig) -> StepLimits:
        ladder = config.ladder
        max_tokens = max(ladder.max_prefill_tokens, ladder.max_decode_batch)
        # a mixed step carries the decode batch and up to max_prefill_seqs prompts
        prefill_seqs = config.max_prefill_seqs + (ladder.max_decode_batch if ladder.mixed_rows else 0)
        max_seqs = max(ladder.max_decode_batch, min(prefill_seqs, ladder.max_prefill_tokens))
        # A sequence never outgrows the model's seq_length; its block table never exceeds that.
        max_width = -(-config.predict.model.seq_length // config.block_size)
        return cls(max_tokens=max_tokens, max_seqs=max_seqs, max_width=max_width, max_sample=max_seqs,
                   max_rows=max(ladder.max_decode_batch, ladder.max_prefill_rows),
                   max_history=max_seqs * config.max_generate_length,
                   vocab=config.predict.model.vocab_size)

    def input_fields(self) -> list[tuple[str, type, int]]:
        k = self.max_sample
        return [("token_ids", np.int32, self.max_tokens), ("seq_lens", np.int32, self.max_seqs),
                ("context_lens", np.int32, self.max_seqs),
                ("block_tables", np.int32, self.max_seqs * self.max_width),
                ("sample_rows", np.int32, k), ("logits_rows", np.int32, self.max_rows),
                *[(name, dtype, k) for name, dtype in _SAMPLING_ROW_FIELDS],
                ("history_ids", np.int32, self.max_history), ("history_offsets", np.int32, k + 1)]

    def output_fields(self) -> list[tuple[str, type, int]]:
        return [("next_tokens", np.int32, self.max_sample), ("next_logits", np.float32, self.max_sample),
                ("logits", np.float32, self.max_rows * self.vocab)]

    def segment_sizes(self) -> tuple[int, int]:
        return _layout(self.input_fields())[1], _layout(self.output_fields())[1]


# SamplingBatch's per-row arrays (history_ids / history_offsets are sized differently).
_SAMPLING_ROW_FIELDS = (("temperature", np.float32), ("top_k", np.int32), ("top_p", np.float32),
                        ("repetition_penalty", np.float32), ("seed", np.int64), ("position", np.int32))


def _layout(fields: list[tuple[str, type, int]]) -> tuple[dict[str, tuple[type, int, int]], int]:
    """{name: (dtype, offset, count)} at aligned offsets, and the total size in bytes."""
    out, offset = {}, 0
    for name, dtype, count in fields:
        out[name] = (dtype, offset, count)
        offset += -(-count * np.dtype(dtype).itemsize // _ALIGN) * _ALIGN
    return out, max(offset, _ALIGN)


def _views(buf: memoryview, layout: dict[str, tuple[type, int, int]]) -> dict[str, np.ndarray]:
    return {name: np.frombuffer(buf, dtype, count, offset) for name, (dtype, offset, count) in layout.items()}


class SharedStep:
    """The two shared segments of a worker and its agents, with numpy views of every array."""

    def __init__(self, prefix: str, limits: StepLimits, segments: tuple[SharedMemory, SharedMemory],
                 owner: bool):
        self.prefix, self.limits, self.owner = prefix, limits, owner
        self._segments = segments
        self._in = _views(segments[0].buf, _layout(limits.input_fields())[0])
        self._out = _views(segments[1].buf, _layout(limits.output_fields())[0])
        self._greedy: dict[int, SamplingBatch] = {}

    @staticmethod
    def new_prefix() -> str:
        return f"{SHM_PREFIX}{os.getpid()}_{secrets.token_hex(4)}"

    @staticmethod
    def names(prefix: str) -> tuple[str, str]:
        return f"{prefix}_in", f"{prefix}_out"

    @classmethod
    def create(cls, prefix: str, limits: StepLimits) -> SharedStep:
        sizes = limits.segment_sizes()
        created: list[SharedMemory] = []
        try:
            for name, size in zip(cls.names(prefix), sizes):
                created.append(SharedMemory(name, create=True, size=size))
        except BaseException:
            for shm in created:
                shm.close()
                shm.unlink()
            raise
        return cls(prefix, limits, (created[0], created[1]), owner=True)

    @classmethod
    def attach(cls, prefix: str, limits: StepLimits) -> SharedStep:
        """Open the worker's segments; fails if they are smaller than this config needs."""
        sizes = limits.segment_sizes()
        segments = []
        for name, size in zip(cls.names(prefix), sizes):
            shm = _attach_untracked(name)
            segments.append(shm)
            if shm.size < size:
                for s in segments:
                    s.close()
                raise ValueError(f"shared memory '{name}' has {shm.size} bytes, this config needs {size}: "
                                 "the worker and the agent were started with different configs")
        return cls(prefix, limits, (segments[0], segments[1]), owner=False)

    # ---- worker side ----------------------------------------------------------------------
    def write_step(self, step: StepInput, step_id: int) -> StepHeader:
        v, lim = self._in, self.limits
        n, s, k, r = len(step.token_ids), len(step.seq_lens), len(step.sample_rows), len(step.logits_rows)
        if step.block_tables.ndim != 2:
            raise ValueError(f"step field 'block_tables': must be a 2-D array, got {step.block_tables.shape}")
        w = step.block_tables.shape[1]
        sp = step.sampling
        _fits("token_ids", n, lim.max_tokens)
        _fits("seq_lens", s, lim.max_seqs)
        _fits("block_tables", w, lim.max_width)
        _fits("sample_rows", k, lim.max_sample)
        _fits("logits_rows", r, lim.max_rows)
        if len(step.context_lens) != s or step.block_tables.shape[0] != s:
            raise ValueError(f"step: context_lens has {len(step.context_lens)} rows and block_tables "
                             f"{step.block_tables.shape[0]}, seq_lens has {s}: must be equal")
        if sp.size != k:
            raise ValueError(f"step.sampling: has {sp.size} rows, sample_rows has {k}: must be equal")
        v["token_ids"][:n] = step.token_ids
        v["seq_lens"][:s] = step.seq_lens
        v["context_lens"][:s] = step.context_lens
        v["block_tables"][:s * w].reshape(s, w)[:] = step.block_tables
        v["sample_rows"][:k] = step.sample_rows
        v["logits_rows"][:r] = step.logits_rows
        greedy = not (sp.temperature > 0).any() and bool((sp.repetition_penalty == 1).all())
        h = 0
        if not greedy:
            h = len(sp.history_ids)
            _fits("sampling.history_ids", h, lim.max_history)
            for name, _ in _SAMPLING_ROW_FIELDS:
                v[name][:k] = getattr(sp, name)
            v["history_ids"][:h] = sp.history_ids
            v["history_offsets"][:k + 1] = sp.history_offsets
        return StepHeader(step_id, bool(step.is_prefill), greedy, n, s, k, r, w, h)

    def read_output(self, h: StepHeader) -> StepOutput:
        """Copies: the segment is rewritten by the next step."""
        v, vocab = self._out, self.limits.vocab
        return StepOutput(v["next_tokens"][:h.n_sample].copy(), v["next_logits"][:h.n_sample].copy(),
                          v["logits"][:h.n_rows * vocab].reshape(h.n_rows, vocab).copy())

    # ---- agent side -----------------------------------------------------------------------
    def read_step(self, h: StepHeader) -> StepInput:
        """Views into the segment, valid until the worker writes the next step."""
        v = self._in
        k = h.n_sample
        if h.all_greedy:
            # argmax ignores every sampling field: reuse one greedy batch per size
            sampling = self._greedy.get(k)
            if sampling is None:
                sampling = self._greedy[k] = SamplingBatch.greedy(k)
        else:
            sampling = SamplingBatch(**{name: v[name][:k] for name, _ in _SAMPLING_ROW_FIELDS},
                                     history_ids=v["history_ids"][:h.n_history],
                                     history_offsets=v["history_offsets"][:k + 1])
        return StepInput(h.is_prefill, v["token_ids"][:h.n_tokens], v["seq_lens"][:h.n_seqs],
                         v["context_lens"][:h.n_seqs],
                         v["block_tables"][:h.n_seqs * h.width].reshape(h.n_seqs, h.width),
                         v["sample_rows"][:k], sampling, v["logits_rows"][:h.n_rows])

    def write_output(self, h: StepHeader, out: StepOutput) -> None:
        k, r, vocab = h.n_sample, h.n_rows, self.limits.vocab
        if len(out.next_tokens) != k or out.logits.shape != (r, vocab):
            raise ValueError(f"step output: {len(out.next_tokens)} tokens and logits {out.logits.shape}, "
                             f"expected {k} and ({r}, {vocab})")
        v = self._out
        v["next_tokens"][:k] = out.next_tokens
        v["next_logits"][:k] = out.next_logits
        v["logits"][:r * vocab].reshape(r, vocab)[:] = out.logits

    # ---- lifetime ---------------------------------------------------------------------------
    def close(self) -> None:
        """Drop the views and unmap; the owner also unlinks the names. Idempotent."""
        self._in, self._out, self._greedy = {}, {}, {}
        segments, self._segments = self._segments, ()
        for shm in segments:
            try:
                shm.close()
            except BufferError:     # a caller still holds a view: the mapping lives until it is freed
                pass
            if self.owner:
                try:
                    shm.unlink()
                except FileNotFoundError:
                    pass


def _fits(name: str, count: int, limit: int) -> None:
    if count > limit:
        raise ValueError(f"step field '{name}': {count} entries exceed the transport's capacity {limit} "
                         "(sized for the largest step the config allows)")


def _attach_untracked(name: str) -> SharedMemory:
    """Attach without the resource tracker: it would unlink the segment when this process exits."""
    if sys.version_info >= (3, 13):
        return SharedMemory(name, track=False)
    shm = SharedMemory(name)
    resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]
    return shm


# ---- stale segments ----------------------------------------------------------------------------

_SEGMENT_NAME = re.compile(rf"^{SHM_PREFIX}(\d+)_")


def segment_pid(name: str) -> int | None:
    """The creating pid encoded in one of our segment names, else None."""
    m = _SEGMENT_NAME.match(name)
    return int(m.group(1)) if m else None


def list_segments() -> list[str]:
    """Our segment names present in /dev/shm."""
    if not os.path.isdir(SHM_DIR):
        return []
    return sorted(n for n in os.listdir(SHM_DIR) if segment_pid(n) is not None)


def remove_stale_segments() -> list[str]:
    """Unlink our segments whose creating process is gone; returns their names."""
    removed = []
    for name in list_segments():
        if not _pid_alive(segment_pid(name)):
            try:
                os.unlink(os.path.join(SHM_DIR, name))
                removed.append(name)
            except FileNotFoundError:
                pass
    return removed


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:     # another user's process
        return True
    return True
