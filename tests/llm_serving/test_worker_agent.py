"""Worker and agents as real processes (shared memory, TCP, MindSpore) on the tiny model."""
from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest
import yaml

from llm_serving.config import load_serving_config
from llm_serving.transport import list_segments, remove_stale_segments
from llm_serving.worker import AgentDiedError, StepFailedError, Worker
from msllama.runner import StepInput, StepOutput, runner_from_config
from msllama.sampling import SamplingBatch, SamplingParams


@pytest.fixture(scope="module")
def config(serving_yaml):
    return load_serving_config(serving_yaml("small"))


@pytest.fixture(scope="module")
def started(config):
    """(worker, progress calls seen during start)."""
    seen: list[tuple[int, int, int, str]] = []
    worker = Worker(config)
    worker.start(lambda rank, i, n, label: seen.append((rank, i, n, label)))
    yield worker, seen
    worker.shutdown()


@pytest.fixture(scope="module")
def worker(started) -> Worker:
    return started[0]


@pytest.fixture(scope="module")
def runner(config):
    """The same model in this process: the reference for the agent's outputs."""
    return runner_from_config(config.predict, config.ladder)


def _segments(prefix: str) -> list[str]:
    return [n for n in list_segments() if n.startswith(prefix + "_")]


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not _gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return _gone(pid)


def _greedy(is_prefill: bool, tokens: list[np.ndarray], context: np.ndarray, tables: np.ndarray,
            logits_rows: list[int] = ()) -> StepInput:
    seq_lens = np.array([len(t) for t in tokens], np.int32)
    ends = (np.cumsum(seq_lens) - 1).astype(np.int32)
    return StepInput(is_prefill, np.concatenate(tokens).astype(np.int32), seq_lens, context.astype(np.int32),
                     tables, ends, SamplingBatch.greedy(len(tokens)), np.array(logits_rows, np.int32))


def _assert_same(got: StepOutput, want: StepOutput) -> None:
    np.testing.assert_array_equal(got.next_tokens, want.next_tokens)
    np.testing.assert_allclose(got.next_logits, want.next_logits, rtol=0, atol=1e-5)
    assert got.logits.shape == want.logits.shape
    np.testing.assert_allclose(got.logits, want.logits, rtol=0, atol=1e-5)


def test_start_relays_warmup_progress(config, started):
    _, seen = started
    n = len(config.ladder.shapes())
    assert seen[0] == (0, 0, 0, "loading weights")
    assert [(i, total) for _, i, total, _ in seen[1:]] == [(i, n) for i in range(n + 1)]
    assert seen[-1][3] == "done" and "decode" in seen[-2][3]


def test_prefill_and_decode_match_an_in_process_runner(worker, runner):
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, 32000, n) for n in (5, 9, 14)]
    tables = (1 + np.arange(3 * 8, dtype=np.int32)).reshape(3, 8)      # 8 own blocks per sequence
    context = np.array([len(p) for p in prompts])
    history = [list(p) for p in prompts]
    step = _greedy(True, prompts, context, tables, logits_rows=[0, 13])
    for i in range(5):
        got, want = worker.execute(step), runner.step(step)
        _assert_same(got, want)
        assert worker.last_compute_seconds > 0
        for h, t in zip(history, got.next_tokens.tolist()):
            h.append(t)
        context = context + 1
        step = _greedy(False, [got.next_tokens[r:r + 1] for r in range(3)], context, tables,
                       logits_rows=[1] if i == 2 else [])
    # sampled rows: temperature, top-k/top-p and a repetition penalty over each history
    params = [SamplingParams(temperature=0.9, top_k=20, top_p=0.95, repetition_penalty=1.3, seed=s)
              for s in (1, 2, 3)]
    step = dataclasses.replace(step, sampling=SamplingBatch.from_rows(params, (context - 1).tolist(), history))
    _assert_same(worker.execute(step), runner.step(step))


def test_a_failing_step_is_answered_and_the_agent_keeps_serving(worker, runner):
    tables = np.array([[40, 41]], np.int32)
    bad = dataclasses.replace(
        _greedy(True, [np.arange(3, 8)], np.array([5]), tables),
        sampling=SamplingBatch.from_rows([SamplingParams(repetition_penalty=1.2)], [5], [[7, 40000]]))
    with pytest.raises(StepFailedError, match=r"agent 0: ValueError: history_ids: must be < vocab size 32000"):
        worker.execute(bad)
    assert worker.alive()
    good = _greedy(True, [np.arange(3, 11)], np.array([8]), np.array([[44, 45]], np.int32))
    _assert_same(worker.execute(good), runner.step(good))


def test_a_step_beyond_the_transport_limits_is_refused_before_sending(worker):
    too_many = _greedy(True, [np.arange(3, 3 + worker.limits.max_tokens + 1)], np.array([5]),
                       np.array([[46]], np.int32))
    with pytest.raises(ValueError, match="'token_ids'"):
        worker.submit(too_many)
    out = worker.execute(_greedy(True, [np.arange(3, 7)], np.array([4]), np.array([[47]], np.int32)))
    assert out.next_tokens.shape == (1,)


def test_shutdown_stops_the_agents_and_unlinks_the_segments(worker):
    pids, prefix = worker.pids, worker.shm_prefix
    assert len(_segments(prefix)) == 2
    worker.shutdown()
    worker.shutdown()       # idempotent
    assert all(_gone(pid) for pid in pids)
    assert _segments(prefix) == [] and not worker.alive()


def test_kill_9_of_an_agent_raises_agent_died_with_the_signal(serving_yaml, tmp_path):
    # with MindSpore's compile cache on, which once broke the agent's first compile
    worker = Worker(load_serving_config(serving_yaml("minimal", compile_cache=str(tmp_path / "cache"))))
    worker.start()
    assert os.listdir(tmp_path / "cache")
    prefix = worker.shm_prefix
    try:
        step = _greedy(True, [np.arange(3, 9)], np.array([6]), np.array([[1]], np.int32))
        worker.execute(step)
        os.kill(worker.pids[0], signal.SIGKILL)
        start = time.monotonic()
        died = r"agent 0 \(pid \d+\) died: killed by signal 9 \(SIGKILL\)$"
        with pytest.raises(AgentDiedError, match=died) as e:
            worker.execute(step)
        assert time.monotonic() - start < 5
        assert e.value.rank == 0 and "SIGKILL" in e.value.reason
        assert not worker.alive() and worker.dead_agent() is e.value
        with pytest.raises(AgentDiedError):     # and stays dead
            worker.submit(step)
    finally:
        worker.shutdown()
    assert _segments(prefix) == []


def test_agents_die_with_their_worker_process(serving_yaml):
    path = serving_yaml("minimal")
    code = ("import time; from llm_serving.config import load_serving_config; "
            "from llm_serving.worker import Worker; "
            f"w = Worker(load_serving_config({path!r})); w.start(); "
            "print(w.pids[0], w.shm_prefix, flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line, "the worker process failed to start"
        pid, prefix = int(line.split()[0]), line.split()[1]
        assert not _gone(pid)
    finally:
        proc.kill()
        proc.wait()
    assert _gone_within(pid, 5), "the agent outlived its worker"
    remove_stale_segments()     # what the next server does at start
    assert _segments(prefix) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_an_agent_dies_with_its_parent_even_before_anyone_connects(serving_yaml):
    # Waiting in accept(), the agent has no connection to lose: only PR_SET_PDEATHSIG can end it.
    args = ["-m", "llm_serving.agent", "--config", serving_yaml("minimal"), "--rank", "0", "--port", "0",
            "--shm", "llmsrv_0_unused"]
    code = ("import os, subprocess, sys, time; "
            f"p = subprocess.Popen([sys.executable, *{args!r}, '--parent-pid', str(os.getpid())]); "
            "print(p.pid, flush=True); time.sleep(600)")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    pid = int(parent.stdout.readline())
    time.sleep(1.0)     # past its start-up, into accept()
    assert not _gone(pid)
    parent.kill()
    parent.wait()
    assert _gone_within(pid, 5), "the agent outlived its parent"


def test_an_agent_that_fails_to_load_reports_why(serving_yaml, tmp_path):
    path = serving_yaml("minimal")
    with open(path) as f:
        data = yaml.safe_load(f)
    with open(data["model_config"]["model_cfg_path"]) as f:
        predict = yaml.safe_load(f)
    predict["model"]["model_config"]["checkpoint_name_or_path"] = str(tmp_path / "missing.ckpt")
    (tmp_path / "predict.yaml").write_text(yaml.safe_dump(predict))
    data["model_config"]["model_cfg_path"] = str(tmp_path / "predict.yaml")
    (tmp_path / "serving.yaml").write_text(yaml.safe_dump(data))
    worker = Worker(load_serving_config(str(tmp_path / "serving.yaml")))
    with pytest.raises(AgentDiedError, match=r"missing\.ckpt.*\(exit code 1\)"):
        worker.start()
    assert _segments(worker.shm_prefix or "llmsrv_none") == [] and not worker.alive()


def test_a_taken_agent_port_is_reported_with_the_config_key(serving_yaml):
    config = load_serving_config(serving_yaml("minimal"))
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", config.agent_ports[0]))
        squatter.listen(1)
        worker = Worker(config)
        with pytest.raises(AgentDiedError, match=r"exit code 1\)?\n.*cannot listen on .*agent_ports"):
            worker.start()
    assert not worker.alive()
