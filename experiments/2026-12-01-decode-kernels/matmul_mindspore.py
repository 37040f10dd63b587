"""MindSpore's CPU MatMul on the bench model's 32 linear layers at 1-32 rows, weights [in, out].

    .venv/bin/python experiments/2026-12-01-decode-kernels/matmul_mindspore.py

One GRAPH_MODE cell chains the 32 matmuls (8 x: 512x1536, 512x512, 512x2752, 1376x512; 101 MB,
beyond the caches); each output feeds a small sum so that no matmul is dropped. Prints the median
and the minimum of 20 calls per row count: the MindSpore column of the README's matmul table.
"""
from __future__ import annotations

import time

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops

SHAPES = [(512, 1536), (512, 512), (512, 2752), (1376, 512)] * 8


class Chain(nn.Cell):
    def __init__(self, rng: np.random.Generator):
        super().__init__()
        self.ws = [Parameter(Tensor((rng.standard_normal(s) * 0.02).astype(np.float32)), f"w{i}")
                   for i, s in enumerate(SHAPES)]
        self.matmul = ops.MatMul()

    def construct(self, x, x_ffn):
        acc = x[:, :8]
        for (k, _), w in zip(SHAPES, self.ws):
            acc = acc + self.matmul(x if k == 512 else x_ffn, w)[:, :8]
        return acc


def main() -> None:
    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE)
    rng = np.random.default_rng(0)
    chain = Chain(rng)
    weight_bytes = sum(k * n for k, n in SHAPES) * 4
    for rows in (1, 4, 8, 16, 32):
        x = Tensor(rng.standard_normal((rows, 512)).astype(np.float32))
        x_ffn = Tensor(rng.standard_normal((rows, 1376)).astype(np.float32))
        chain(x, x_ffn).asnumpy()
        ts = []
        for _ in range(20):
            t = time.perf_counter()
            chain(x, x_ffn).asnumpy()
            ts.append(time.perf_counter() - t)
        print(f"rows={rows}: 32 matmuls median {np.median(ts) * 1e3:.2f} ms, min {min(ts) * 1e3:.2f} ms "
              f"({weight_bytes / min(ts) / 1e9:.1f} GB/s of weights)")


if __name__ == "__main__":
    main()
