"""The LM head's argmax: the small_matmul library's ArgMaxRows against MindSpore's ops.max(x, 1)
(CPU ArgMaxWithValue), each a one-op GRAPH_MODE cell on the same [B, 32000] float32 logits,
alternated, medians of REPS calls (graph call and asnumpy of the ids included). Also checks that
both give the same ids and values.

    cd mindformers && ../.venv/bin/python ../experiments/2026-12-03-matmul-fetch/argmax_pair.py 1,32,128
"""
import os
import sys
import time

import numpy as np


def main() -> int:
    import mindspore as ms
    from mindspore import Tensor, nn, ops

    from msllama.kernels.small_matmul import argmax_op

    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE)

    class Kernel(nn.Cell):
        def __init__(self):
            super().__init__()
            self.argmax = argmax_op()

        def construct(self, x):
            return self.argmax(x)

    class MindSpore(nn.Cell):
        def construct(self, x):
            top, where = ops.max(x, 1)
            return where, top

    reps = int(os.environ.get("REPS", 50))
    rng = np.random.default_rng(0)
    cells = {"ArgMaxRows": Kernel(), "ops.max": MindSpore()}
    for b in (int(v) for v in sys.argv[1].split(",")):
        x = Tensor(rng.standard_normal((b, 32000), dtype=np.float32))
        outs = {name: [t.asnumpy() for t in cell(x)] for name, cell in cells.items()}
        same = all(np.array_equal(a.astype(np.float64), m.astype(np.float64))
                   for a, m in zip(outs["ArgMaxRows"], outs["ops.max"]))
        times = {name: [] for name in cells}
        for _ in range(reps):
            for name, cell in cells.items():
                start = time.perf_counter()
                cell(x)[0].asnumpy()
                times[name].append(time.perf_counter() - start)
        k, m = (1e3 * float(np.median(times[n])) for n in cells)
        print(f"B={b}: ArgMaxRows {k:.3f} ms, ops.max {m:.3f} ms, ratio {m / k:.2f}; same ids and values: {same}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
