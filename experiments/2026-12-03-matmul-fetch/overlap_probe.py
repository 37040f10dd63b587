"""Would attention on one core beside the matmuls on the other pay? The bench model's 8 layers of
paged attention (`../2026-12-02-prefetch/attention_pair.py`'s inputs: contexts uniform in
[75, 225), 8 layers' caches) and of matmuls (QKV, output, gate/up, down at M = B), through ctypes:
- both on 2 threads, one after the other (what the layer op does now);
- each on 1 thread alone;
- both at once, on 1 thread each (an upper bound for overlapping them).
Medians of 10 rounds, the three orders alternated within each round.

    cd mindformers && ../.venv/bin/python ../experiments/2026-12-03-matmul-fetch/overlap_probe.py 32,128

Compare the 1-thread matmul with half the 2-thread one before trusting a figure. When a host's
second vCPU is contended, 2 threads run slower than 1 and every ratio here is meaningless.
"""
import ctypes
import os
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "2026-12-02-prefetch"))
import attention_pair as A  # noqa: E402
from matmul_pair import SHAPES, matmul_calls  # noqa: E402
from msllama.kernels import paged_attention, small_matmul  # noqa: E402

THREADS_ENV = "MSLLAMA_KERNEL_THREADS"  # read by the kernels at every call


def main() -> int:
    attention = getattr(ctypes.CDLL(str(paged_attention.library().path)), paged_attention.FUNCTION.format(A.BS))
    matmul = getattr(ctypes.CDLL(str(small_matmul.library().path)), small_matmul.FUNCTION)
    rng = np.random.default_rng(0)
    for b in (int(v) for v in sys.argv[1].split(",")):
        args, caches = A.inputs(b, rng)
        attention_calls = [[args[0], cache, *args[2:]] for cache in caches]
        products = matmul_calls(SHAPES["8 layers"], b, rng)

        def attend():
            for a in attention_calls:
                A.call(attention, a)

        def multiply():
            for a in products:
                A.call(matmul, a)

        def timed(fn):
            start = time.perf_counter()
            fn()
            return time.perf_counter() - start

        def both():
            side = threading.Thread(target=attend)
            side.start()
            multiply()
            side.join()

        ms = {k: [] for k in ("attention 2", "matmul 2", "attention 1", "matmul 1", "both at once")}
        for _ in range(12):
            os.environ[THREADS_ENV] = "2"
            ms["attention 2"].append(timed(attend))
            ms["matmul 2"].append(timed(multiply))
            os.environ[THREADS_ENV] = "1"
            ms["attention 1"].append(timed(attend))
            ms["matmul 1"].append(timed(multiply))
            ms["both at once"].append(timed(both))
        os.environ.pop(THREADS_ENV)
        m = {k: 1e3 * float(np.median(v[2:])) for k, v in ms.items()}
        serial = m["attention 2"] + m["matmul 2"]
        print(f"B={b}: 2 threads, one after the other {m['attention 2']:.1f} + {m['matmul 2']:.1f} = {serial:.1f} ms; "
              f"1 thread alone: attention {m['attention 1']:.1f}, matmul {m['matmul 1']:.1f}; "
              f"both at once {m['both at once']:.1f} ms ({serial / m['both at once']:.2f}x)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
