"""The paged attention kernel alone, two sources alternated in one process: OLD (a copy of an older
paged_attention.cpp) against the tree's kernels/paged_attention.cpp, both called through ctypes
on the bench model's shapes (8 KV heads x 64, block size 16, 4096 blocks, contexts uniform in
[75, 225)), 8 layers' caches so the K/V come from memory, not from the caches.

    git show 7b304a6:mindformers/msllama/kernels/paged_attention.cpp > /tmp/paged_attention_old.cpp
    cd mindformers && ../.venv/bin/python ../experiments/2026-12-02-prefetch/attention_pair.py \
        /tmp/paged_attention_old.cpp 8,32,128,256

Prints, per batch, the median and minimum of REPS (default 30) alternated calls of all 8 layers,
the K/V read rate, and whether both outputs are bitwise the same.
"""
import ctypes
import os
import sys
import time
from pathlib import Path

import numpy as np

from msllama.kernels import paged_attention

KV_HEADS, GROUP, HEAD_DIM, BS, BLOCKS, WIDTH, LAYERS, POSITIONS = 8, 1, 64, 16, 4096, 64, 8, 1024


def inputs(batch: int, rng: np.random.Generator) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(the kernel's arguments for layer 0 with its output last, every layer's cache)."""
    lens = rng.integers(75, 225, batch).astype(np.int32)
    free = rng.permutation(np.arange(1, BLOCKS)).astype(np.int32)
    tables = np.zeros((batch, WIDTH), np.int32)
    used = 0
    for b, n in enumerate(-(-lens // BS)):
        tables[b, :n] = free[used:used + n]
        used += n
    qkv = rng.standard_normal((batch, (KV_HEADS * GROUP + 2 * KV_HEADS) * HEAD_DIM), dtype=np.float32)
    caches = [rng.standard_normal((BLOCKS * 2 * KV_HEADS * BS, HEAD_DIM), dtype=np.float32) for _ in range(LAYERS)]
    rope = [rng.standard_normal((POSITIONS, HEAD_DIM), dtype=np.float32) for _ in range(2)]
    out = np.zeros((batch, KV_HEADS, GROUP, HEAD_DIM), np.float32)
    return [qkv, caches[0], *rope, tables, lens, out], caches


def call(fn, args: list[np.ndarray]) -> None:
    n = len(args)
    shapes = [(ctypes.c_int64 * a.ndim)(*a.shape) for a in args]
    rc = fn(n, (ctypes.c_void_p * n)(*[a.ctypes.data for a in args]), (ctypes.c_int * n)(*[a.ndim for a in args]),
            (ctypes.POINTER(ctypes.c_int64) * n)(*[ctypes.cast(s, ctypes.POINTER(ctypes.c_int64)) for s in shapes]),
            (ctypes.c_char_p * n)(*[str(a.dtype).encode() for a in args]), None, None)
    if rc != 0:
        raise RuntimeError(f"kernel returned {rc}")


def main() -> int:
    old, batches = Path(sys.argv[1]).resolve(), [int(b) for b in sys.argv[2].split(",")]
    reps = int(os.environ.get("REPS", 30))
    fns = []
    for source in (old, paged_attention.SOURCE):
        lib = ctypes.CDLL(str(paged_attention.loaded_library(source, (paged_attention.FUNCTION.format(BS),)).path))
        fns.append(getattr(lib, paged_attention.FUNCTION.format(BS)))
    for batch in batches:
        args, caches = inputs(batch, np.random.default_rng(batch))
        outs = []
        for fn in fns:
            call(fn, args)
            outs.append(args[-1].copy())
        ts: list[list[float]] = [[], []]
        for _ in range(reps):
            for i, fn in enumerate(fns):
                start = time.perf_counter()
                for cache in caches:
                    call(fn, args[:1] + [cache] + args[2:])
                ts[i].append((time.perf_counter() - start) * 1e3)
        kv_bytes = int(args[5].sum()) * KV_HEADS * HEAD_DIM * 2 * 4 * LAYERS
        (a, b), (a_min, b_min) = (np.median(t) for t in ts), (min(t) for t in ts)
        print(f"B={batch}: {kv_bytes / 1e6:.0f} MB of K/V; old {a:.1f} (min {a_min:.1f}) ms = {kv_bytes / a / 1e6:.1f} GB/s, "
              f"new {b:.1f} (min {b_min:.1f}) ms = {kv_bytes / b / 1e6:.1f} GB/s, old/new {a / b:.2f}; "
              f"bitwise the same: {np.array_equal(*outs)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
