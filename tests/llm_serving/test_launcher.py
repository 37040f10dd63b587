"""examples/start.py as users run it: flags, start-up, signals, agent death, clean exit."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest
import requests
import yaml

from llm_serving.transport import list_segments

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
START_PY = os.path.join(ROOT, "llm-serving", "examples", "start.py")

SERVING_LINE = r"^Serving llama2 at http://127\.0\.0\.1:(\d+) \(task (\d)\)$"


def _run(*args: str, cwd: str = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def _leftovers(launched) -> tuple[list[str], list[int]]:
    """Shared memory segments and live agent processes the launcher left behind."""
    pids = [int(p) for p in re.search(r"agent pids \[([\d, ]+)\]", launched.output).group(1).split(",")]
    alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    return [n for n in list_segments() if n.startswith(f"llmsrv_{launched.proc.pid}_")], alive


def test_a_bad_config_key_exits_2_naming_the_key(serving_yaml, tmp_path):
    with open(serving_yaml("minimal")) as f:
        data = yaml.safe_load(f)
    data["serving_config"]["agent_port"] = 1234
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(data))
    r = _run(START_PY, "--task", "1", "--config", str(tmp_path / "bad.yaml"))
    assert r.returncode == 2 and "config key 'serving_config.agent_port': unknown" in r.stderr


def test_bad_flags_exit_2(serving_yaml):
    path = serving_yaml("minimal")
    r = _run(START_PY, "--task", "1", "--config", path, "--save-logits-dir", "x")
    assert r.returncode == 2 and "'--save-logits-dir': only with --task 2" in r.stderr
    r = _run(START_PY, "--task", "3", "--config", path)
    assert r.returncode == 2 and "--task" in r.stderr
    r = _run(START_PY, "--config", os.path.join(ROOT, "no_such.yaml"))
    assert r.returncode == 2 and "no_such.yaml" in r.stderr


def test_start_py_runs_from_the_llm_serving_folder():
    r = _run("examples/start.py", "--help", cwd=os.path.join(ROOT, "llm-serving"))
    assert r.returncode == 0 and "--task" in r.stdout


def _stream(url: str, max_new_tokens: int, out: list) -> None:
    body = {"inputs": "tell me a story", "parameters": {"max_new_tokens": max_new_tokens, "do_sample": "False",
                                                      "return_full_text": "True"}}
    with requests.post(f"{url}/models/llama2/generate_stream", json=body, stream=True, timeout=60) as r:
        for line in r.iter_lines():
            if line:
                out.append(json.loads(line))


def test_sigint_lets_the_request_in_flight_finish_and_exits_0_clean(serving_yaml, launch):
    launched = launch(serving_yaml("minimal"), "--task", "1")
    port = int(launched.wait_for(SERVING_LINE).group(1))
    url = f"http://127.0.0.1:{port}"
    assert requests.get(f"{url}/health", timeout=5).status_code == 200
    lines: list = []
    client = threading.Thread(target=_stream, args=(url, 40, lines))
    client.start()
    while not lines and client.is_alive():
        time.sleep(0.005)
    assert launched.stop(signal.SIGINT) == 0, launched.output
    client.join(timeout=30)
    assert lines[-1]["data"][0]["generated_tokens"] == 40      # finished, not cut off
    assert _leftovers(launched) == ([], [])


def test_sigterm_exits_0_clean_and_task_2_prepares_the_logits_folder(serving_yaml, launch, tmp_path):
    folder = tmp_path / "npy"
    launched = launch(serving_yaml("minimal"), "--task", "2", "--save-logits-dir", str(folder))
    assert launched.wait_for(SERVING_LINE).group(2) == "2"
    assert folder.is_dir()
    assert launched.stop(signal.SIGTERM) == 0, launched.output
    assert _leftovers(launched) == ([], [])


def test_interrupt_during_warmup_exits_0_clean(serving_yaml, launch):
    launched = launch(serving_yaml("small"), "--task", "1")
    launched.wait_for(r"^compiling 2/")
    assert launched.stop(signal.SIGINT) == 0, launched.output
    assert "interrupted during start-up" in launched.output
    assert [n for n in list_segments() if n.startswith(f"llmsrv_{launched.proc.pid}_")] == []
    assert [p for p in psutil.pids() if _is_agent_of(p, launched.proc.pid)] == []


def _is_agent_of(pid: int, launcher_pid: int) -> bool:
    try:
        return f"--parent-pid {launcher_pid}" in " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return False


def test_a_killed_agent_is_named_and_reported_by_health_until_stopped(serving_yaml, launch):
    launched = launch(serving_yaml("small"), "--task", "1")
    url = f"http://127.0.0.1:{launched.wait_for(SERVING_LINE).group(1)}"
    agent = int(re.search(r"agent pids \[(\d+)\]", launched.output).group(1))
    lines: list = []
    client = threading.Thread(target=_stream, args=(url, 110, lines))
    client.start()
    while not lines and client.is_alive():
        time.sleep(0.005)
    os.kill(agent, signal.SIGKILL)
    launched.wait_for(rf"agent 0 \(pid {agent}\) died: killed by signal 9 \(SIGKILL\)", timeout=10)
    client.join(timeout=30)
    assert not client.is_alive(), "the request in flight hangs"
    health = requests.get(f"{url}/health", timeout=5)
    assert health.status_code == 503 and "SIGKILL" in health.json()["reason"]
    assert launched.stop(signal.SIGINT) == 1, launched.output
    assert _leftovers(launched) == ([], [])


def test_the_session_server_fixture_serves(server):
    assert requests.get(f"{server.url}/health", timeout=5).status_code == 200
    lines: list = []
    _stream(server.url, 3, lines)
    assert lines[-1]["data"][0]["generated_tokens"] == 3 and os.path.isfile(server.tokenizer_path)
