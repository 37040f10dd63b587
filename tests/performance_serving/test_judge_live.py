"""The judge and the precision check against live servers on 127.0.0.1."""
from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys

import pytest
import yaml

from msllama import assets
from msllama.tokenizer import Tokenizer

ROOT = assets.ROOT
JUDGE = os.path.join(ROOT, "performance_serving", "test_serving_performance.py")
ACC = os.path.join(ROOT, "performance_serving", "acc_allclose.py")
DEBUG_SERVING = os.path.join(ROOT, "llm-serving", "configs", "llama", "llama_7b_kbk_pa_dyn_debug.yaml")


def judge(*args: str, cwd: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, JUDGE, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def judge_prompt(r: dict) -> str:
    return r["instruction"] + ":" + r["input"] if r["input"] else r["instruction"]


@pytest.fixture(scope="module")
def short_dataset(server, tmp_path_factory) -> str:
    """30 debug records short enough for the tiny test model (256 tokens)."""
    tok = Tokenizer(server.tokenizer_path)
    with open(os.path.join(assets.build()["alpaca_5010.json"])) as f:
        records = [r for r in json.load(f)
                   if len(tok.encode(judge_prompt(r))) + tok.piece_count(r["output"]) <= 200][:30]
    path = tmp_path_factory.mktemp("data") / "alpaca_5010.json"
    path.write_text(json.dumps(records))
    return str(path)


def test_the_judge_scores_a_live_server(server, short_dataset, tmp_path):
    out = judge("-X", "15", "-T", "2", "-P", str(server.port), "-O", str(tmp_path), "--dataset", short_dataset,
                "--tokenizer", server.tokenizer_path, cwd=str(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    (log,) = (tmp_path / "testLog").iterdir()
    assert "All Tasks Done; Exec Time is " in log.read_text()
    records = json.loads((tmp_path / "result_15.0_x.json").read_text())
    assert len(records) == 30
    assert all({"input", "resp_text", "res_time", "first_token_time"} <= set(r) and r["ok"] for r in records)
    assert all(r["output_tokens"] == r["max_new_tokens"] for r in records)
    summary = json.loads((tmp_path / "summary_15.0_x.json").read_text())
    assert summary["completed"] == 30 and summary["failed"] == 0
    assert summary["total_output_tokens"] == sum(r["output_tokens"] for r in records)
    assert summary["e2e_ms"]["mean"] == pytest.approx(1000 * statistics.mean(r["res_time"] for r in records), rel=1e-6)
    assert summary["ttft_ms"]["median"] == pytest.approx(
        1000 * statistics.median(r["first_token_time"] for r in records), rel=1e-6)
    assert summary["output_throughput"] == pytest.approx(summary["total_output_tokens"] / summary["duration_s"])
    assert (tmp_path / "plot_15.0_x.png").stat().st_size > 10_000


def test_the_openai_backend_runs_the_same_trace_on_v1(server, short_dataset, tmp_path):
    out = judge("-X", "15", "-T", "2", "-P", str(server.port), "-O", str(tmp_path), "--dataset", short_dataset,
                "--tokenizer", server.tokenizer_path, "--backend", "openai", "--model", "llama2", cwd=str(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    records = json.loads((tmp_path / "result_15.0_x.json").read_text())
    assert len(records) == 30 and all(r["ok"] and r["output_tokens"] == r["max_new_tokens"] for r in records)


def debug_serving_yaml(folder, decode_batch: int, free_port) -> str:
    """The CPU debug config with a 4-graph ladder: decode batch `decode_batch` only."""
    with open(DEBUG_SERVING) as f:
        data = yaml.safe_load(f)
    base = os.path.dirname(DEBUG_SERVING)
    mc = data["model_config"]
    mc["model_cfg_path"] = os.path.normpath(os.path.join(base, mc["model_cfg_path"]))
    mc.update(decode_batch_size=[decode_batch], zactivate_len=[256, 1024], prefill_batch_size=[decode_batch])
    data["scheduler_config"].update(prefill_tokens=[256], prefill_context_factors=[1, 4],
                                    compile_cache=os.path.join(ROOT, ".cache", "compile", "tests"))
    data["tokenizer"]["vocab_file"] = os.path.normpath(os.path.join(base, data["tokenizer"]["vocab_file"]))
    data["serving_config"].update(server_port=free_port(), agent_ports=[free_port()])
    path = os.path.join(folder, f"debug_batch{decode_batch}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(data, f)
    return path


@pytest.mark.parametrize("decode_batch, shuffle", [(1, False), (16, True)])
def test_task_2_passes_the_baseline_at_any_batch_and_order(decode_batch, shuffle, launch, tmp_path, get_free_port):
    records = 60
    with open(assets.build()["alpaca_521.json"]) as f:
        data = json.load(f)[:records]
    if shuffle:
        random.Random(0).shuffle(data)
    dataset = tmp_path / "alpaca_521.json"
    dataset.write_text(json.dumps(data))
    base = tmp_path / "base"
    subprocess.run([sys.executable, "-m", "msllama.npy_base", "--subset-of",
                    os.path.join(ROOT, "file_npy_base", "alpaca_521_500.npz"), "--records", str(records),
                    "--out", str(base)], check=True, capture_output=True, timeout=120)
    logits = tmp_path / "file_npy"
    server = launch(debug_serving_yaml(str(tmp_path), decode_batch, get_free_port), "--task", "2", "--save-logits-dir", str(logits))
    port = server.wait_for(r"Serving \S+ at http://127.0.0.1:(\d+)", timeout=600).group(1)
    out = judge("--task", "2", "-X", "50", "-T", "2", "--num-requests", str(records), "-P", port,
                "-O", str(tmp_path), "--dataset", str(dataset), cwd=str(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert server.stop() == 0
    acc = subprocess.run([sys.executable, ACC, "--base_path", str(base), "--new_path", str(logits)],
                         capture_output=True, text=True, timeout=120)
    assert acc.returncode == 0, acc.stdout + acc.stderr
    assert acc.stdout.startswith("passed ") and " 0/" not in acc.stdout.splitlines()[0]
