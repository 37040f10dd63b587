"""Would a decode layer pipelined over two row halves pay? The bench model's 8 layers through the
kernels' ctypes entry points (no MindSpore), attention inputs as ../2026-12-02-prefetch/attention_pair.py
(contexts uniform in [75, 225)), random weights:
- now: per layer QKV, attention, then the output, gate/up and down matmuls over all rows, each on
  2 threads (what the layer op does);
- pipelined: QKV(A) on 2 threads; attention(A) on one thread beside QKV(B) on the other;
  attention(B) beside the output/gate-up/down matmuls of A; those of B on 2 threads.
Medians of 10 rounds, the two alternated. Norms and pointwise ops are left out of both.

    cd mindformers && ../.venv/bin/python ../experiments/2026-12-04-halves-pipeline/pipeline_probe.py 48,64,128,192
"""
import ctypes
import os
import sys
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "2026-12-02-prefetch"))
sys.path.insert(0, os.path.join(HERE, "..", "2026-12-03-matmul-fetch"))
import attention_pair as A  # noqa: E402
from matmul_pair import matmul_calls  # noqa: E402
from msllama.kernels import paged_attention, small_matmul  # noqa: E402

THREADS_ENV = "MSLLAMA_KERNEL_THREADS"  # read by the kernels at every call
QKV, POST = [(512, 1536)], [(512, 512), (512, 2752), (1376, 512)]


def halves(args: list[np.ndarray], h: int) -> list[list[np.ndarray]]:
    """One layer's attention arguments split into rows [0, h) and [h, B) (the cache shared)."""
    qkv, cache, cos, sin, tables, lens, out = args
    return [[qkv[s], cache, cos, sin, tables[s].copy(), lens[s].copy(), out[s].copy()]
            for s in (slice(0, h), slice(h, None))]


def side_by_side(f, g) -> None:
    t = threading.Thread(target=f)
    t.start()
    g()
    t.join()


def main() -> int:
    attention = getattr(ctypes.CDLL(str(paged_attention.library().path)), paged_attention.FUNCTION.format(A.BS))
    matmul = getattr(ctypes.CDLL(str(small_matmul.library().path)), small_matmul.FUNCTION)

    def products(calls):
        for a in calls:
            A.call(matmul, a)

    rng = np.random.default_rng(0)
    for b in (int(v) for v in sys.argv[1].split(",")):
        args, caches = A.inputs(b, rng)
        h = b // 2
        layers = [[args[0], c, *args[2:]] for c in caches]
        split = [halves(a, h) for a in layers]
        qkv, post = ([matmul_calls(s, b, rng) for _ in layers] for s in (QKV, POST))
        qkv_h, post_h = ([[matmul_calls(s, n, rng) for n in (h, b - h)] for _ in layers] for s in (QKV, POST))

        def now():
            os.environ[THREADS_ENV] = "2"
            for i, a in enumerate(layers):
                products(qkv[i])
                A.call(attention, a)
                products(post[i])

        def pipelined():
            for i, (a, b_half) in enumerate(split):
                os.environ[THREADS_ENV] = "2"
                products(qkv_h[i][0])
                os.environ[THREADS_ENV] = "1"
                side_by_side(lambda: A.call(attention, a), lambda: products(qkv_h[i][1]))
                side_by_side(lambda: A.call(attention, b_half), lambda: products(post_h[i][0]))
                os.environ[THREADS_ENV] = "2"
                products(post_h[i][1])

        ts = {"now": [], "pipelined": []}
        for _ in range(12):
            for name, fn in (("now", now), ("pipelined", pipelined)):
                start = time.perf_counter()
                fn()
                ts[name].append(time.perf_counter() - start)
        os.environ.pop(THREADS_ENV)
        a, p = (1e3 * float(np.median(ts[k][2:])) for k in ("now", "pipelined"))
        print(f"B={b}: 8 layers now {a:.1f} ms, pipelined over halves {p:.1f} ms: {a / p:.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
