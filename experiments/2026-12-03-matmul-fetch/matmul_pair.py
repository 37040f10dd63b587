"""The panel matmul alone, a git revision's kernel against the tree's, alternated in one process:
both small_matmul libraries called through ctypes on numpy arrays (no MindSpore), the bench
model's shapes (8 layers' QKV, output, gate/up and down projections; the LM head), random weights.

    cd mindformers && REPS=40 ../.venv/bin/python ../experiments/2026-12-03-matmul-fetch/matmul_pair.py e7c22db 8,16,32,128

Prints per M the medians of REPS calls of all 8 layers' four matmuls and of the LM head, old then
new, and whether the outputs are bitwise the same.
"""
import ctypes
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "2026-12-02-prefetch"))
from attention_pair import call  # noqa: E402  (one aot-kernel call through ctypes on numpy arrays)
from msllama.kernels import pack_panels, small_matmul  # noqa: E402
from msllama.kernels.build import loaded_library  # noqa: E402

SHAPES = {"8 layers": [(512, 1536), (512, 512), (512, 2752), (1376, 512)] * 8, "LM head": [(512, 32000)]}
KERNELS = "mindformers/msllama/kernels"


def old_source(rev: str, folder: Path) -> Path:
    """The revision's small_matmul.cpp and headers in `folder` (its library key hashes the headers
    beside it, so it differs from the tree's wherever they differ)."""
    for name in ("small_matmul.cpp", "matmul.h", "common.h"):
        text = subprocess.run(["git", "show", f"{rev}:{KERNELS}/{name}"], capture_output=True, text=True,
                              check=True).stdout
        (folder / name).write_text(text)
    return folder / "small_matmul.cpp"


def matmul_calls(shapes: list[tuple[int, int]], m: int, rng: np.random.Generator) -> list[list[np.ndarray]]:
    """One SmallMatMul argument list (x [m, K], packed random weight, output [m, N]) per (K, N)."""
    return [[rng.standard_normal((m, k), dtype=np.float32), pack_panels(rng.standard_normal((k, n), dtype=np.float32)),
             np.zeros((m, n), np.float32)] for k, n in shapes]


def main() -> int:
    rev, rows = sys.argv[1], [int(m) for m in sys.argv[2].split(",")]
    reps = int(os.environ.get("REPS", 40))
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        sources = (old_source(rev, Path(tmp)), small_matmul.SOURCE)
        fns = [getattr(ctypes.CDLL(str(loaded_library(s, (small_matmul.FUNCTION,)).path)), small_matmul.FUNCTION)
               for s in sources]
    print(f"old {rev}, new the tree; medians of {reps}, ms")
    for m in rows:
        line = [f"M={m:4d}"]
        for name, shapes in SHAPES.items():
            calls = matmul_calls(shapes, m, rng)
            times, outs = [[], []], []
            for r in range(reps + 1):
                for i, fn in enumerate(fns):
                    start = time.perf_counter()
                    for args in calls:
                        call(fn, args)
                    times[i].append(time.perf_counter() - start)
                    if r == 0:
                        outs.append([a[2].copy() for a in calls])
            old, new = (1e3 * float(np.median(t[1:])) for t in times)
            same = all(np.array_equal(a, b) for a, b in zip(*outs))
            line.append(f"{name} {old:.2f} / {new:.2f} = {old / new:.2f}{'' if same else ' (outputs differ)'}")
        print("  ".join(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
