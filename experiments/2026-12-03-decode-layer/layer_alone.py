"""The layer op alone: DecodeLayerBS16 called through ctypes on numpy arrays (no MindSpore), the
bench model's 8 layers of random weights, contexts uniform in [75, 225) on scattered blocks, the
median of 30 calls of all 8 layers per batch size. Compare with the same layers inside a step
(step_pair.py / step_profile.py) to see what the graph adds.

    .venv/bin/python experiments/2026-12-03-decode-layer/layer_alone.py 1,8,32,128
"""
import ctypes
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "2026-12-02-prefetch"))
from attention_pair import call  # noqa: E402  (one aot-kernel call through ctypes on numpy arrays)
from msllama.kernels import decode_layer, pack_panels  # noqa: E402

H, F, HEADS, KV_HEADS, D, BS, BLOCKS, POSITIONS, WIDTH = 512, 1376, 8, 8, 64, 16, 4096, 1024, 64


def main() -> int:
    fn = ctypes.CDLL(str(decode_layer.library().path)).DecodeLayerBS16
    rng = np.random.default_rng(0)

    def panels(k: int, n: int) -> np.ndarray:
        return pack_panels((rng.standard_normal((k, n)) * 0.02).astype(np.float32))

    layers = [[np.ones(H, np.float32), np.ones(H, np.float32), np.array([1e-5], np.float32),
               np.array([HEADS, KV_HEADS], np.int32), panels(H, 3 * H), panels(H, H), panels(H, 2 * F), panels(F, H),
               np.zeros((BLOCKS * 2 * KV_HEADS * BS, D), np.float32)] for _ in range(8)]
    angles = np.arange(POSITIONS)[:, None] * 1e-2
    cos, sin = (np.tile(f(angles * np.ones(D // 2)), 2).astype(np.float32) for f in (np.cos, np.sin))
    for b in (int(v) for v in sys.argv[1].split(",")):
        lens = rng.integers(75, 225, b).astype(np.int32)
        tables = np.zeros((b, WIDTH), np.int32)
        blocks = rng.permutation(np.arange(1, BLOCKS))
        for i, n in enumerate(-(-lens // BS)):
            tables[i, :n] = blocks[i * 16:i * 16 + n]  # contexts < 225 tokens: at most 15 blocks each
        x = rng.standard_normal((b, H)).astype(np.float32)
        out = np.zeros_like(x)
        calls = [[x, *w, cos, sin, tables, lens, out] for w in layers]
        ts = []
        for _ in range(31):
            start = time.perf_counter()
            for args in calls:
                call(fn, args)
            ts.append((time.perf_counter() - start) * 1e3)
        print(f"B={b}: 8 layers {np.median(ts[1:]):.2f} ms (min {min(ts[1:]):.2f})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
