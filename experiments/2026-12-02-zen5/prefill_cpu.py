"""One prefill step (46 prompts x 22 tokens, the 1024-token graph) of the bench model with a
RuntimeConfig override: wall time and the process's user and system CPU per step, the median of
REPS (default 5) steps after 3 untimed ones. Run each setting in its own process, alternated:

    cd mindformers && for c in '{}' '{"fused_pointwise_rows": 1024}' '{}' '{"fused_pointwise_rows": 1024}'; do
      ../.venv/bin/python ../experiments/2026-12-02-zen5/prefill_cpu.py "$c"; done
"""
import json
import os
import resource
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "2026-12-01-matmul-tiles"))
from step_pair import S, bench_runner, bench_weights, steps  # noqa: E402


def main() -> int:
    overrides = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    reps = int(os.environ.get("REPS", 5))
    runner = bench_runner([8], bench_weights(), **overrides)
    step = steps([8], np.random.default_rng(0))["prefill 46x22"]
    for _ in range(3):
        runner.step(step)
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    wall = [S.timed_ms(runner, step) for _ in range(reps)]
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    print(f"{json.dumps(overrides)}: wall {np.median(wall):.1f} ms, per step user "
          f"{(r1.ru_utime - r0.ru_utime) / reps * 1e3:.1f} ms, system {(r1.ru_stime - r0.ru_stime) / reps * 1e3:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
