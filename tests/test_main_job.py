"""`./run.sh` end to end with small counts (the same main job a user runs, scaled down)."""
from __future__ import annotations

import os
import re
import subprocess

from msllama.assets import ROOT


def test_run_sh_runs_both_tasks_and_passes_the_precision_check(tmp_path, get_free_port):
    # run from another folder with relative paths: they mean what the user typed there
    dataset = os.path.relpath(os.path.join(ROOT, ".cache", "debug", "alpaca_5010.json"), tmp_path)
    out = subprocess.run([os.path.join(ROOT, "run.sh"), "-X", "20", "-T", "2", "--task2-records", "40",
                          "--task2-qps", "40", "--port", str(get_free_port()), "--out", "results",
                          "--dataset", dataset],
                         capture_output=True, text=True, timeout=1200, cwd=tmp_path)
    tmp_path = tmp_path / "results"
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    assert re.search(r"task1: exec time [\d.]+ s, 40 ok / 0 failed", text), text[-2000:]
    assert re.search(r"task2: exec time [\d.]+ s, 40 ok / 0 failed", text), text[-2000:]
    m = re.search(r"precision: passed (\d+)/(\d+)", text)
    assert m and m.group(1) == m.group(2) and int(m.group(2)) > 0, text[-2000:]
    for name in ("server_task1.log", "server_task2.log", "acc_allclose.txt", "task1/plot_20.0_x.png"):
        assert (tmp_path / name).exists(), name
    assert "server stopped" in (tmp_path / "server_task2.log").read_text()
