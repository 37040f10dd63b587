"""Where one decode step's time goes: mindspore.Profiler over REPS decode steps of batch B on the
bench model, the per-op CPU times summed by op and divided by the steps.

    .venv/bin/python experiments/2026-12-02-zen1/step_profile.py 1,8,128 [OUT, default /tmp/step_profile]

A batch of "prefill" profiles the 46 x 22-token prefill step instead. SETTINGS (JSON) overrides
RuntimeConfig fields, e.g. SETTINGS='{"fused_pointwise_rows": 1024}'.

Steps as ../2026-12-01-matmul-tiles/step_pair.py (contexts uniform in [75, 225), scattered blocks);
REPS (default 5) profiled steps per batch after 3 untimed ones; every batch in its own process so
one profile never mixes with another.
"""
import csv
import glob
import json
import os
import subprocess
import sys
from collections import defaultdict

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "2026-12-01-matmul-tiles"))
from step_pair import S, bench_runner, bench_weights, steps  # noqa: E402  (S: ../2026-12-01-decode-kernels/step_ab.py)


def profile(batch: str, out: str) -> None:
    import mindspore as ms

    reps = int(os.environ.get("REPS", 5))
    rows = 8 if batch == "prefill" else int(batch)   # a prefill runner still needs one decode graph
    runner = bench_runner([rows], bench_weights(), **json.loads(os.environ.get("SETTINGS", "{}")))
    step = steps([rows], np.random.default_rng(0))["prefill 46x22" if batch == "prefill" else f"decode B={rows}"]
    for _ in range(3):
        runner.step(step)
    prof = ms.Profiler(output_path=out)
    wall = [S.timed_ms(runner, step) for _ in range(reps)]
    prof.stop()
    prof.analyse()
    print(f"wall per step {np.median(wall):.1f} ms (median of {reps})")


def report(batch: str, out: str) -> None:
    reps = int(os.environ.get("REPS", 5))
    # the newest profile: a rerun into the same folder adds one beside the old
    path = max(glob.glob(os.path.join(out, "**", "cpu_op_detail_info_0.csv"), recursive=True), key=os.path.getmtime)
    per_op: dict[str, float] = defaultdict(float)   # ms over all profiled steps
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            # "Default/model-LlamaModel/layers-CellList/7-DecoderLayer/w2-Linear/Custom-op0" -> "w2-Linear/Custom":
            # one entry per op of a layer, summed over the layers
            parts = [p for p in row["full_op_name"].split("/")[2:] if not p.endswith("DecoderLayer")
                     and p != "layers-CellList"]
            per_op["/".join(parts[:-1] + [row["op_type"]]) or row["op_type"]] += float(row["op_total_time(ms)"])
    total = sum(per_op.values())
    print(f"B={batch}: all ops {total / reps:.1f} ms per step")
    for name, ms in sorted(per_op.items(), key=lambda kv: -kv[1])[:12]:
        print(f"  {name:40s} {ms / reps:7.2f} ms")


def main() -> int:
    base = sys.argv[2] if len(sys.argv) > 2 else "/tmp/step_profile"
    for b in sys.argv[1].split(","):
        out = os.path.join(base, f"B{b}")
        if os.environ.get("STEP_PROFILE_CHILD"):
            profile(b, out)
            continue
        subprocess.run([sys.executable, __file__, b, base], check=True,
                       env={**os.environ, "STEP_PROFILE_CHILD": "1"})
        report(b, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
