"""What a decode step costs around its graph: `ModelRunner.step` against the graph call alone (the
same input Tensors every call) and the input Tensors' creation, medians of 200 calls, in one
process. Bench model, contexts and blocks as ../2026-12-01-matmul-tiles/step_pair.py.

    .venv/bin/python experiments/2026-12-03-decode-layer/graph_call.py 1,8 ['{"fused_layer_rows": 0}']
"""
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "2026-12-01-matmul-tiles"))
import step_pair as P  # noqa: E402
from msllama.runner import _pad  # noqa: E402


def median_ms(fn, n: int = 200) -> float:
    ts = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - start)
    return 1e3 * float(np.median(ts))


def main() -> int:
    batches = [int(b) for b in sys.argv[1].split(",")]
    overrides = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    runner = P.bench_runner(batches, P.bench_weights(), **overrides)
    for b, step in zip(batches, (P.steps(batches, np.random.default_rng(0))[f"decode B={b}"] for b in batches)):
        for _ in range(20):
            runner.step(step)
        b_pad, m_pad = runner.ladder.decode_shape(b, int(-(-step.context_lens.max() // runner.rt.block_size)))
        positions = (step.context_lens - 1).astype(np.int32)
        tables = np.zeros((b_pad, m_pad), np.int32)
        tables[:b] = step.block_tables[:, :m_pad]
        arrays = (_pad(step.token_ids, b_pad, 0), _pad(positions, b_pad, 0),
                  _pad(runner._slots(step.block_tables, np.arange(b), positions), b_pad, 0), tables,
                  _pad(step.context_lens.astype(np.int32), b_pad, 1))
        tensors = list(map(runner._tensor, arrays))
        print(f"B={b} {overrides}: runner.step {median_ms(lambda: runner.step(step)):.2f} ms, "
              f"graph call + ids to numpy {median_ms(lambda: runner.decode_step(*tensors)[1].asnumpy()):.2f}, "
              f"input tensors {median_ms(lambda: list(map(runner._tensor, arrays))):.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
