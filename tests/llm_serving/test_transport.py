"""Transport pieces without a model: framing over real sockets, step arrays through real shared
memory (created here, attached as an agent attaches), limits, stale-segment removal."""
from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
from multiprocessing import resource_tracker
from multiprocessing.shared_memory import SharedMemory

import numpy as np
import pytest

from llm_serving.config import load_serving_config
from llm_serving.transport import (ConnectionClosed, Msg, SharedStep, StepHeader, StepLimits, decode_json,
                                   encode_message, list_segments, pack_done, pack_failed, recv_message,
                                   remove_stale_segments, send_json, send_message, unpack_done, unpack_failed)
from msllama.runner import StepInput, StepOutput
from msllama.sampling import SamplingBatch, SamplingParams

LIMITS = StepLimits(max_tokens=64, max_seqs=8, max_width=6, max_sample=8, max_rows=4, max_history=200, vocab=50)


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def shared():
    """(worker side, agent side) of one pair of segments."""
    owner = SharedStep.create(SharedStep.new_prefix(), LIMITS)
    agent = SharedStep.attach(owner.prefix, LIMITS)
    yield owner, agent
    agent.close()
    owner.close()


def test_messages_round_trip_in_order(pair):
    a, b = pair
    send_json(a, Msg.HELLO, {"rank": 0, "pid": 12})
    send_message(a, Msg.DONE, pack_done(7, 0.25))
    send_message(a, Msg.FAILED, pack_failed(8, "ValueError: bad ü"))
    send_message(a, Msg.SHUTDOWN)
    kind, payload = recv_message(b)
    assert kind is Msg.HELLO and decode_json(payload) == {"rank": 0, "pid": 12}
    kind, payload = recv_message(b)
    assert kind is Msg.DONE and unpack_done(payload) == (7, 0.25)
    kind, payload = recv_message(b)
    assert kind is Msg.FAILED and unpack_failed(payload) == (8, "ValueError: bad ü")
    assert recv_message(b) == (Msg.SHUTDOWN, b"")


def test_a_message_split_across_writes_is_reassembled(pair):
    a, b = pair
    header = StepHeader(3, True, False, 10, 2, 2, 1, 4, 9)
    frame = encode_message(Msg.STEP, header.pack())
    for i in range(len(frame)):
        a.sendall(frame[i:i + 1])
    kind, payload = recv_message(b)
    assert kind is Msg.STEP and StepHeader.unpack(payload) == header


def test_closed_connection_and_foreign_bytes_raise_connection_closed(pair):
    a, b = pair
    a.sendall(b"GET / HTTP/1.1\r\n\r\n")      # an HTTP client on an agent port: not our protocol
    with pytest.raises(ConnectionClosed, match="not this protocol"):
        recv_message(b)
    a.close()
    with pytest.raises(ConnectionClosed):
        recv_message(b)


def _step(rng: np.random.Generator, sampled: bool, n_seqs: int = 3) -> StepInput:
    seq_lens = rng.integers(1, 9, n_seqs).astype(np.int32)
    n = int(seq_lens.sum())
    context = (seq_lens + rng.integers(0, 20, n_seqs)).astype(np.int32)
    tables = rng.integers(1, 99, (n_seqs, 5)).astype(np.int32)
    ends = (np.cumsum(seq_lens) - 1).astype(np.int32)
    params = [SamplingParams(temperature=0.7 if sampled else 0.0, top_k=5 * i, top_p=0.9,
                             repetition_penalty=1.2 if sampled else 1.0, seed=100 + i) for i in range(n_seqs)]
    histories = [rng.integers(0, 50, int(k)).tolist() for k in rng.integers(0, 6, n_seqs)]
    sampling = SamplingBatch.from_rows(params, context.tolist(), histories)
    return StepInput(True, rng.integers(0, 50, n).astype(np.int32), seq_lens, context, tables, ends, sampling,
                     ends[:2].copy())


def _assert_same_step(got: StepInput, want: StepInput, compare_sampling: bool) -> None:
    for f in dataclasses.fields(StepInput):
        if f.name == "sampling":
            continue
        a, b = getattr(got, f.name), getattr(want, f.name)
        if isinstance(b, np.ndarray):
            np.testing.assert_array_equal(a, b, err_msg=f.name)
            assert a.shape == b.shape, f.name
        else:
            assert a == b, f.name
    if compare_sampling:    # every SamplingBatch field: a new field without transport fails here
        for f in dataclasses.fields(SamplingBatch):
            np.testing.assert_array_equal(getattr(got.sampling, f.name), getattr(want.sampling, f.name),
                                          err_msg=f.name)


def test_sampled_step_arrives_field_for_field(shared):
    owner, agent = shared
    rng = np.random.default_rng(0)
    for step_id in range(1, 4):    # a smaller step after a larger one reads only its own entries
        step = _step(rng, sampled=True, n_seqs=4 - step_id)
        header = StepHeader.unpack(owner.write_step(step, step_id).pack())
        assert header.step_id == step_id and not header.all_greedy
        _assert_same_step(agent.read_step(header), step, compare_sampling=True)


def test_greedy_step_skips_sampling_arrays_and_reads_as_greedy(shared):
    owner, agent = shared
    step = _step(np.random.default_rng(1), sampled=False)
    header = owner.write_step(step, 1)
    assert header.all_greedy and header.n_history == 0
    got = agent.read_step(header)
    _assert_same_step(got, step, compare_sampling=False)
    assert got.sampling.size == 3 and not got.sampling.temperature.any()
    assert (got.sampling.repetition_penalty == 1).all()


def test_outputs_come_back_as_copies(shared):
    owner, agent = shared
    header = owner.write_step(_step(np.random.default_rng(2), sampled=False), 1)
    logits = np.random.default_rng(3).standard_normal((2, LIMITS.vocab)).astype(np.float32)
    agent.write_output(header, StepOutput(np.array([4, 5, 6], np.int32), np.array([1.5, 2.5, 3.5], np.float32),
                                          logits))
    out = owner.read_output(header)
    agent.write_output(header, StepOutput(np.zeros(3, np.int32), np.zeros(3, np.float32),
                                          np.zeros_like(logits)))
    assert out.next_tokens.tolist() == [4, 5, 6] and out.next_logits.tolist() == [1.5, 2.5, 3.5]
    np.testing.assert_array_equal(out.logits, logits)


def test_wrong_output_shape_is_refused(shared):
    owner, agent = shared
    header = owner.write_step(_step(np.random.default_rng(2), sampled=False), 1)
    with pytest.raises(ValueError, match=r"expected 3 and \(2, 50\)"):
        agent.write_output(header, StepOutput(np.zeros(2, np.int32), np.zeros(2, np.float32),
                                              np.zeros((2, 50), np.float32)))


@pytest.mark.parametrize("field, change", [
    ("token_ids", lambda s: dataclasses.replace(s, token_ids=np.zeros(65, np.int32))),
    ("block_tables", lambda s: dataclasses.replace(s, block_tables=np.zeros((3, 7), np.int32))),
    ("logits_rows", lambda s: dataclasses.replace(s, logits_rows=np.zeros(5, np.int32))),
])
def test_a_step_beyond_the_limits_names_the_field(shared, field, change):
    owner, _ = shared
    with pytest.raises(ValueError, match=rf"'{field}': \d+ entries exceed the transport's capacity"):
        owner.write_step(change(_step(np.random.default_rng(4), sampled=False)), 1)


def test_attaching_with_a_larger_config_is_refused(shared):
    owner, _ = shared
    with pytest.raises(ValueError, match="different configs"):
        SharedStep.attach(owner.prefix, dataclasses.replace(LIMITS, vocab=5000))


def test_limits_hold_the_largest_steps_of_a_config(serving_yaml):
    config = load_serving_config(serving_yaml("small"))
    limits = StepLimits.for_config(config)
    assert limits.max_tokens == config.ladder.max_prefill_tokens == 64
    assert limits.max_width * config.block_size >= config.predict.model.seq_length
    assert limits.max_seqs >= config.max_decode_batch and limits.vocab == 32000


def test_an_exiting_agent_process_leaves_the_segments_to_the_worker(shared):
    owner, _ = shared
    code = ("import sys; from llm_serving.transport import SharedStep, StepLimits; "
            f"s = SharedStep.attach({owner.prefix!r}, StepLimits(**{dataclasses.asdict(LIMITS)!r})); s.close()")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert set(SharedStep.names(owner.prefix)) <= set(list_segments())
    owner.close()
    assert not set(SharedStep.names(owner.prefix)) & set(list_segments())


def test_stale_segments_of_dead_processes_are_removed():
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    stale, live = f"llmsrv_{gone.pid}_test_in", f"llmsrv_{os.getpid()}_test_in"
    for name in (stale, live):
        shm = SharedMemory(name, create=True, size=64)
        resource_tracker.unregister(shm._name, "shared_memory")
        shm.close()
    try:
        removed = remove_stale_segments()
        assert stale in removed and live not in removed
        assert live in list_segments() and stale not in list_segments()
    finally:
        for name in (stale, live):
            if os.path.exists(f"/dev/shm/{name}"):
                os.unlink(f"/dev/shm/{name}")
