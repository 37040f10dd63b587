"""A lower bound on how fast this machine could serve a trace: peak compute, peak memory bandwidth.

    .venv/bin/python experiments/physical_limit.py [--requests 300] [--dataset D --tokenizer T]
        [--config predict.yaml] [--json out.json]

Measures the best fp32 GEMM rate (numpy, and torch when installed) and the best large-array
copy/read bandwidth, counts the FLOPs and the unavoidable memory traffic of serving the judge's
trace with the model, and prints limit_exec_s = max(flops / peak_flops, bytes / bandwidth).
ASSUMPTIONS says what the bound leaves out; every choice makes the bound lower, never higher.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "performance_serving"))
from judge.trace import TraceRequest, build_trace, load_records, load_tokenizer  # noqa: E402

from msllama.config import LlamaConfig, load_predict_config  # noqa: E402

BENCH_PREDICT_YAML = os.path.join(ROOT, "mindformers", "configs", "llama2", "predict_llama2_bench.yaml")
DEBUG_DIR = os.path.join(ROOT, ".cache", "debug")
DEFAULT_DATASET = os.path.join(DEBUG_DIR, "alpaca_5010.json")
DEFAULT_TOKENIZER = os.path.join(DEBUG_DIR, "tokenizer.model")
FP32_BYTES = 4

ASSUMPTIONS = (
    "Peak FLOP/s is the best large square fp32 GEMM measured here (numpy/OpenBLAS, MindSpore GRAPH_MODE and torch); serving "
    "steps run smaller, thinner matmuls, so real steps reach less.",
    "Bandwidth is the best of a large-array copy (read + write bytes counted) and a large-array sum "
    "(read), numpy and torch; caches are not modelled (the 232 MB of weights do not fit in them).",
    "FLOPs count only matmuls: q/k/v/o and the SwiGLU projections for every fed token (prompt tokens "
    "and every generated token but the last), the LM head only where a token is sampled (one row per "
    "generated token), attention scores and values over the real causal context (no padding). "
    "Norms, rotary, softmax, SiLU, embedding lookups and sampling are left out.",
    "Output lengths are the requested max_new_tokens (the judge's trace); an early EOS would shorten them.",
    "Bytes: all requests run concurrently, so every weight (all layers, final norm, LM head; not the "
    "embedding table, which is only gathered) is read once per step: one prefill step for all prompts "
    "plus (longest output - 1) decode steps. Each decode token reads the K and V of its whole context "
    "once; prompt K/V computed in the prefill step are not re-read; KV writes and activations are left out.",
    "Compute and memory traffic overlap perfectly, so the bound is the larger of the two times; HTTP, "
    "tokenization, scheduling and the requests' arrival times cost nothing.",
)


@dataclass(frozen=True)
class MachinePeak:
    flops: float                    # best fp32 GEMM rate, FLOP/s
    flops_how: str
    bandwidth: float                # best memory bandwidth, bytes/s
    bandwidth_how: str
    measurements: dict[str, float]  # every rate measured, by name


def _best_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: thread pools, page faults
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _torch():
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(os.cpu_count() or 1)
    return torch


def _mindspore_gemm(a: np.ndarray, b: np.ndarray) -> Callable[[], object]:
    """A one-MatMul GRAPH_MODE cell over Parameters (the kit's own engine); asnumpy() waits for it."""
    import mindspore as ms
    from mindspore import nn, ops

    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE)

    class Gemm(nn.Cell):
        def __init__(self):
            super().__init__()
            self.a, self.b = ms.Parameter(ms.Tensor(a), "a"), ms.Parameter(ms.Tensor(b), "b")
            self.matmul = ops.MatMul()

        def construct(self):
            return self.matmul(self.a, self.b)

    cell = Gemm()
    return lambda: cell().asnumpy()


def measure_peak(gemm_sizes: Sequence[int] = (2048, 4096), repeats: int = 5,
                 array_mib: int = 512) -> MachinePeak:
    """Best fp32 GEMM FLOP/s and memory bytes/s on this machine, with numpy, MindSpore and (if
    present) torch: MindSpore's CPU MatMul outruns the other two here, so leaving it out would
    understate the peak and flatter every system's distance to the limit."""
    rates: dict[str, float] = {}
    rng = np.random.default_rng(0)
    torch = _torch()
    for n in gemm_sizes:
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        flop = 2.0 * n ** 3
        rates[f"gemm numpy n={n}"] = flop / _best_seconds(lambda: a @ b, repeats)
        rates[f"gemm mindspore n={n}"] = flop / _best_seconds(_mindspore_gemm(a, b), repeats)
        if torch is not None:
            ta, tb = torch.from_numpy(a), torch.from_numpy(b)
            rates[f"gemm torch n={n}"] = flop / _best_seconds(lambda: torch.mm(ta, tb), repeats)
    src = rng.standard_normal(array_mib * (1 << 20) // FP32_BYTES, dtype=np.float32)
    dst = np.empty_like(src)
    rates["copy numpy (read+write)"] = 2 * src.nbytes / _best_seconds(lambda: np.copyto(dst, src), repeats)
    rates["sum numpy (read)"] = src.nbytes / _best_seconds(lambda: src.sum(), repeats)
    if torch is not None:
        tsrc, tdst = torch.from_numpy(src), torch.from_numpy(dst)
        rates["copy torch (read+write)"] = 2 * src.nbytes / _best_seconds(lambda: tdst.copy_(tsrc), repeats)
        rates["sum torch (read)"] = src.nbytes / _best_seconds(lambda: tsrc.sum(), repeats)
    gemm = max((k for k in rates if k.startswith("gemm")), key=rates.__getitem__)
    memory = max((k for k in rates if not k.startswith("gemm")), key=rates.__getitem__)
    return MachinePeak(rates[gemm], gemm, rates[memory], memory, rates)


@dataclass(frozen=True)
class TraceCost:
    requests: int
    prompt_tokens: int              # BOS included
    output_tokens: int
    flops_linear: float
    flops_lm_head: float
    flops_attention: float
    weight_bytes: int               # one read of every weight a step touches
    weight_passes: int              # steps when every request runs at once
    kv_read_bytes: float

    @property
    def flops(self) -> float:
        return self.flops_linear + self.flops_lm_head + self.flops_attention

    @property
    def bytes(self) -> float:
        return self.weight_bytes * self.weight_passes + self.kv_read_bytes


def trace_cost(cfg: LlamaConfig, prompt_lens: Sequence[int], output_lens: Sequence[int],
               value_bytes: int = FP32_BYTES) -> TraceCost:
    """FLOPs and minimum bytes of serving requests with these prompt and output lengths."""
    if len(prompt_lens) != len(output_lens) or not len(prompt_lens):
        raise ValueError("prompt_lens and output_lens must be non-empty and of equal length")
    p = np.asarray(prompt_lens, dtype=np.float64)
    o = np.asarray(output_lens, dtype=np.float64)
    if (p < 1).any() or (o < 1).any():
        raise ValueError("every prompt and output length must be >= 1")
    d, layers = cfg.hidden_size, cfg.num_layers
    kv = cfg.kv_heads * cfg.head_dim
    linear_params = layers * (2 * d * d + 2 * d * kv + 3 * d * cfg.ffn_hidden)
    fed = p + o - 1                                   # the last generated token is never fed back
    # A token at 0-based position t attends to t + 1 keys: QK^T and PV cost 2 * d each per key.
    attention = layers * 4 * d * (fed * (fed + 1) / 2)
    # Decode tokens sit at positions p .. p + o - 2 and read K and V of t + 1 positions each.
    decode_keys = (fed * (fed + 1) - p * (p + 1)) / 2
    head_params = cfg.vocab_size * d
    step_params = linear_params + layers * 2 * d + d + head_params   # + norms; embedding only gathered
    return TraceCost(
        requests=len(p),
        prompt_tokens=int(p.sum()),
        output_tokens=int(o.sum()),
        flops_linear=float(2 * linear_params * fed.sum()),
        flops_lm_head=float(2 * head_params * o.sum()),
        flops_attention=float(attention.sum()),
        weight_bytes=step_params * value_bytes,
        weight_passes=int(o.max()),
        kv_read_bytes=float(decode_keys.sum() * 2 * layers * kv * value_bytes),
    )


@dataclass(frozen=True)
class Limit:
    limit_exec_s: float
    bound_by: str                   # "compute" | "memory"
    compute_s: float
    memory_s: float
    peak: MachinePeak
    cost: TraceCost
    assumptions: tuple[str, ...] = ASSUMPTIONS

    def to_json(self) -> dict:
        out = asdict(self)
        out["cost"].update(flops=self.cost.flops, bytes=self.cost.bytes)
        return out


def limit(cost: TraceCost, peak: MachinePeak) -> Limit:
    compute_s, memory_s = cost.flops / peak.flops, cost.bytes / peak.bandwidth
    return Limit(max(compute_s, memory_s), "compute" if compute_s >= memory_s else "memory",
                 compute_s, memory_s, peak, cost)


def judge_trace(dataset: str, tokenizer: str, requests: int, qps: float, seed: int = 1234) -> list[TraceRequest]:
    """The judge's trace: the first `requests` records of `dataset` (cycled), Poisson arrivals."""
    for flag, path in (("--dataset", dataset), ("--tokenizer", tokenizer)):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{flag}: file not found: {path}")
    return build_trace(load_records(dataset)[:requests], load_tokenizer(tokenizer), requests, qps, seed)


def format_limit(lim: Limit) -> str:
    c = lim.cost
    return "\n".join([
        f"peak fp32 GEMM   {lim.peak.flops / 1e9:8.1f} GFLOP/s  ({lim.peak.flops_how})",
        f"peak bandwidth   {lim.peak.bandwidth / 1e9:8.1f} GB/s     ({lim.peak.bandwidth_how})",
        f"trace            {c.requests} requests, {c.prompt_tokens} prompt + {c.output_tokens} output tokens",
        f"FLOPs            {c.flops / 1e12:8.3f} T (linear {c.flops_linear / 1e12:.3f}, LM head "
        f"{c.flops_lm_head / 1e12:.3f}, attention {c.flops_attention / 1e12:.3f})",
        f"bytes            {c.bytes / 1e9:8.1f} GB (weights {c.weight_bytes / 1e6:.0f} MB x {c.weight_passes} "
        f"steps, KV reads {c.kv_read_bytes / 1e9:.1f} GB)",
        f"limit_exec_s     {lim.limit_exec_s:8.2f} s ({lim.bound_by}-bound; compute {lim.compute_s:.2f} s, "
        f"memory {lim.memory_s:.2f} s)",
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=300, help="the first N records of the dataset")
    p.add_argument("--dataset", default=DEFAULT_DATASET, help="alpaca JSON (default: the debug stand-in)")
    p.add_argument("--tokenizer", default=DEFAULT_TOKENIZER, help="sentencepiece model (default: the debug one)")
    p.add_argument("--config", default=BENCH_PREDICT_YAML, help="mindformers predict YAML of the model")
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args(argv)
    if args.requests < 1:
        p.error(f"--requests must be >= 1, got {args.requests}")
    try:
        trace = judge_trace(args.dataset, args.tokenizer, args.requests, qps=1.0)
        cfg = load_predict_config(args.config).model
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("measuring peak GEMM rate and memory bandwidth (about half a minute) ...", flush=True)
    lim = limit(trace_cost(cfg, [r.input_tokens for r in trace], [r.max_new_tokens for r in trace]),
                measure_peak())
    print(format_limit(lim))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(lim.to_json(), f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
