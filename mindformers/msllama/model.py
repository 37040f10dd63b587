"""Llama-2 with a paged KV cache in MindSpore, in one file.

The graph entry points share one set of Parameters (weights and KV cache):

* `PrefillStep` (basic ops) runs the new tokens of several sequences flattened to `[T]` (prompts,
  prompt chunks after a prefix-cache hit). Linear layers see `[T, hidden]`; attention reads every
  context token of the batch from the cache (`[C]` keys, the new ones included, written first)
  and masks by (sequence id, position): no padding of prompts to a common length.
* `DecodeStep` runs one token for each of `[B]` sequences; each reads its own context through its
  block table. With `attention_kernel: basic` the reads are one gather of
  `[kv_heads, B, max_blocks * block_size, head_dim]`, masked by context length; with `cpu_paged`
  a C++ kernel (kernels/paged_attention.cpp) takes the fused QKV projection, applies the rotary
  embedding, writes the step's K/V rows and reads the cache in place, each sequence only up to
  its own context length. `PagedPrefillStep` runs prefill tokens
  through the same kernel, each token as a query reading its sequence's cache up to itself.
  With `fused_layer_rows` (the CPU default) both run each whole layer as one C++ op
  (kernels/decode_layer.cpp) built from the same pieces, bit for bit the per-op layer.

KV cache storage: per layer one flat Parameter `[num_blocks * 2 * kv_heads * block_size, head_dim]`,
block-major: a block holds the K rows of every KV head, then their V rows, each head's rows
contiguous, so row(slot, kind, h) = ((block * 2 + kind) * kv_heads + h) * block_size + offset with
`slot = block * block_size + offset`. A block is one contiguous read (the kernel reads random 4 KB
pieces at a third of the speed of 32-64 KB ones, experiments/2026-12-01-decode-kernels). Writes use
`scatter_update` on the Parameter itself (in place, ../shared/FINDINGS.md); reads are `gather`s.
Block 0 is a trash block: padded tokens write there and padded block-table entries point there,
so every index is valid.

Both steps return logits for selected rows and their argmax + max value, so a greedy step only
copies two small vectors to the host.
"""
from __future__ import annotations

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

from .config import ConfigError, LlamaConfig, RuntimeConfig
from .kernels import (argmax_op, decode_attention_op, decode_layer_op, pack_panels, resolve_kernels, rms_norm_op,
                      small_matmul_op, swiglu_op)
from .kernels.paged_attention import KERNEL_NAME
from .weights import EMBEDDING, FINAL_NORM, layer_names, lm_head

_NEG = -1e30  # masked scores: exp underflows to exactly 0 in fp32


def rope_tables(cfg: LlamaConfig) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin tables [seq_length, head_dim] (rotate-half layout), computed in float64."""
    d = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (np.arange(0, d, 2, dtype=np.float64) / d))
    angles = np.arange(cfg.seq_length, dtype=np.float64)[:, None] * inv_freq[None, :]
    return np.tile(np.cos(angles), 2), np.tile(np.sin(angles), 2)


def _param(value: np.ndarray, name: str, dtype: ms.dtype) -> Parameter:
    return Parameter(Tensor(value, dtype=dtype), name=name, requires_grad=False)


def _t(w: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(w.T)


class Linear(nn.Cell):
    """y = x @ w with w given [in, out] (MindSpore's CPU MatMul reads that layout 1.5-2.5x faster
    at 16-64 rows than the checkpoints' [out, in] with transpose_b). Graphs of at most
    `small_rows` rows (a static shape) run the small-batch C++ kernel on a panel-packed copy
    instead: MatMul reads weights at 6-9 GB/s there, the kernel at 16-22. `packed` keeps that copy
    for the whole-layer op too."""

    def __init__(self, w: np.ndarray, name: str, dtype: ms.dtype, small_rows: int, packed: bool = False):
        super().__init__()
        self.weight = _param(w, name, dtype)
        self.small_rows = small_rows
        self.panels = _param(pack_panels(w), name + ".panels", dtype) if small_rows or packed else None
        self.small = small_matmul_op(w.shape[1]) if small_rows else None
        self.matmul = ops.MatMul()

    def runs_kernel(self, rows: int) -> bool:
        """Whether a graph of `rows` rows (a static shape) runs the C++ kernel."""
        return bool(self.small_rows) and rows <= self.small_rows

    def construct(self, x):
        if self.runs_kernel(x.shape[0]):
            return self.small(x, self.panels)
        return self.matmul(x, self.weight)


def _mask_bias(mask):
    """0 where attending is allowed, a huge negative number elsewhere (added to fp32 scores)."""
    return ops.select(mask, ops.zeros(mask.shape, ms.float32), ops.fill(ms.float32, mask.shape, _NEG))


class RMSNorm(nn.Cell):
    """Graphs of at most `fused_rows` rows run one C++ op (kernels/pointwise.cpp) instead of seven
    basic ones: there the ops' launch cost, not their work, is what a step pays."""

    def __init__(self, weight: np.ndarray, eps: float, name: str, fused_rows: int):
        super().__init__()
        self.weight = _param(weight, name, ms.float32)
        self.eps = eps
        self.fused_rows = fused_rows
        self.fused = rms_norm_op() if fused_rows else None
        self.eps_tensor = Tensor(np.array([eps], np.float32))

    def construct(self, x):
        if self.fused_rows and x.shape[0] <= self.fused_rows:
            return self.fused(x, self.weight, self.eps_tensor)
        x32 = ops.cast(x, ms.float32)
        norm = x32 * ops.rsqrt(ops.mean(ops.square(x32), -1, keep_dims=True) + self.eps)
        return ops.cast(norm * self.weight, x.dtype)


class DecoderLayer(nn.Cell):
    """One transformer block. Q/K/V and gate/up projections are fused into one matmul each."""

    def __init__(self, cfg: LlamaConfig, rt: RuntimeConfig, w: dict[str, np.ndarray], i: int,
                 dtype: ms.dtype):
        super().__init__()
        n = layer_names(i)
        self.heads, self.kv_heads, self.head_dim = cfg.num_heads, cfg.kv_heads, cfg.head_dim
        self.group = cfg.num_heads // cfg.kv_heads
        self.q_size = cfg.hidden_size
        self.kv_size = cfg.kv_heads * cfg.head_dim
        self.ffn = cfg.ffn_hidden
        self.block_size = rt.block_size
        self.scale = 1.0 / float(np.sqrt(cfg.head_dim))
        p = f"model.layers.{i}."
        fused = self.fused_rows = rt.fused_pointwise_rows
        self.attention_norm = RMSNorm(w[n["attention_norm"]], cfg.rms_norm_eps, p + "attention_norm.weight", fused)
        self.ffn_norm = RMSNorm(w[n["ffn_norm"]], cfg.rms_norm_eps, p + "ffn_norm.weight", fused)
        self.swiglu = swiglu_op() if fused else None
        small, self.layer_rows = rt.small_matmul_rows, rt.fused_layer_rows
        packed = self.layer_rows > 0
        self.wqkv = Linear(_t(np.concatenate([w[n["wq"]], w[n["wk"]], w[n["wv"]]])), p + "wqkv", dtype, small, packed)
        self.wo = Linear(_t(w[n["wo"]]), p + "wo", dtype, small, packed)
        self.w13 = Linear(_t(np.concatenate([w[n["w1"]], w[n["w3"]]])), p + "w13", dtype, small, packed)
        self.w2 = Linear(_t(w[n["w2"]]), p + "w2", dtype, small, packed)
        block_rows = 2 * cfg.kv_heads * rt.block_size
        self.kv_cache = _param(np.zeros((rt.num_blocks * block_rows, cfg.head_dim), np.float32), p + "kv_cache", dtype)
        self.block_rows = block_rows
        self.value_rows = cfg.kv_heads * rt.block_size  # a V row sits this far after its K row
        self.bmm_t = ops.BatchMatMul(transpose_b=True)
        self.bmm = ops.BatchMatMul()
        self.head_offsets = Tensor(np.arange(cfg.kv_heads, dtype=np.int32) * rt.block_size)
        self.paged_kernel = (decode_attention_op(rt.block_size, cfg.num_heads, cfg.kv_heads)
                             if rt.attention_kernel == KERNEL_NAME else None)
        self.layer_op = decode_layer_op(rt.block_size) if self.layer_rows else None
        self.head_counts = Tensor(np.array([cfg.num_heads, cfg.kv_heads], np.int32))

    def _rope(self, x, cos, sin):
        """x [N, heads, D], cos/sin [N, 1, D]: rotate-half rotary embedding."""
        half = self.head_dim // 2
        rotated = ops.concat((-x[:, :, half:], x[:, :, :half]), -1)
        return x * cos + rotated * sin

    def _qkv(self, x, cos, sin):
        """Projected, rotated q [N, heads, D] and k, v [N, kv_heads, D]."""
        n = x.shape[0]
        qkv = self.wqkv(self.attention_norm(x))
        q = qkv[:, :self.q_size].reshape(n, self.heads, self.head_dim)
        k = qkv[:, self.q_size:self.q_size + self.kv_size].reshape(n, self.kv_heads, self.head_dim)
        v = qkv[:, self.q_size + self.kv_size:].reshape(n, self.kv_heads, self.head_dim)
        return self._rope(q, cos, sin), self._rope(k, cos, sin), v

    def _key_rows(self, slots):
        """Cache rows of the keys of `slots` [...] for every KV head: [kv_heads, ...]."""
        base = (slots // self.block_size) * self.block_rows + slots % self.block_size
        return self.head_offsets.reshape((-1,) + (1,) * slots.ndim) + base.expand_dims(0)

    def _write_cache(self, k, v, slots):
        """Scatter new k/v [N, kv_heads, D] to their slots (one scatter for both); returns the cache."""
        rows = self._key_rows(slots)  # [kv_heads, N]
        idx = ops.concat((rows, rows + self.value_rows))
        return ops.scatter_update(self.kv_cache, idx, ops.concat((k, v), 1).transpose(1, 0, 2))

    def _finish(self, x, attn):
        """Output projection, residual, SwiGLU MLP, residual."""
        x = x + self.wo(attn)
        gate_up = self.w13(self.ffn_norm(x))
        if self.fused_rows and x.shape[0] <= self.fused_rows:
            return x + self.w2(self.swiglu(gate_up))
        return x + self.w2(ops.silu(gate_up[:, :self.ffn]) * gate_up[:, self.ffn:])

    def _softmax_v(self, scores, bias, v):
        probs = ops.softmax(ops.cast(scores, ms.float32) + bias, -1)
        return self.bmm(ops.cast(probs, v.dtype), v)

    def prefill(self, x, cos, sin, slots, k_index, bias):
        """x [T, hidden]; k_index [C] cache slots of all context tokens; bias [group * T, C]."""
        t = x.shape[0]
        q, k, v = self._qkv(x, cos, sin)
        cache = self._write_cache(k, v, slots)
        idx = self._key_rows(k_index)  # [kv_heads, C]
        keys = ops.gather(cache, idx, 0)  # [kv_heads, C, D]
        vals = ops.gather(cache, idx + self.value_rows, 0)
        # [T, heads, D] -> [kv_heads, group * T, D]: each KV head serves its group of query heads
        q = q.reshape(t, self.kv_heads, self.group, self.head_dim).transpose(1, 2, 0, 3)
        q = q.reshape(self.kv_heads, self.group * t, self.head_dim) * self.scale
        out = self._softmax_v(self.bmm_t(q, keys), bias, vals)  # [kv_heads, group * T, D]
        out = out.reshape(self.kv_heads, self.group, t, self.head_dim).transpose(2, 0, 1, 3)
        return self._finish(x, out.reshape(t, self.q_size))

    def decode(self, x, cos, sin, slots, block_tables, k_index, context_lens, bias, use_kernel):
        """x [B, hidden]; block_tables [B, M]; context_lens [B]; for the basic attention (None with
        the kernel) k_index [B, L] cache slots of each sequence's context and bias [B, 1, L].
        cos/sin: [B, 1, D] rows of the rotary tables, or with the kernel the whole tables.
        With the kernel, graphs of at most `fused_layer_rows` rows run the layer as one op."""
        b = x.shape[0]
        if use_kernel and self.layer_rows and b <= self.layer_rows:
            return self.layer_op(x, self.attention_norm.weight, self.ffn_norm.weight, self.attention_norm.eps_tensor,
                                 self.head_counts, self.wqkv.panels, self.wo.panels, self.w13.panels, self.w2.panels,
                                 self.kv_cache, cos, sin, block_tables, context_lens)
        if use_kernel:
            # rotates q/k, writes k/v at each row's position, then reads the cache up to it, in place
            qkv = self.wqkv(self.attention_norm(x))
            out = self.paged_kernel(qkv, self.kv_cache, cos, sin, block_tables, context_lens)  # [B, kv_heads, group, D]
            return self._finish(x, out.reshape(b, self.q_size))
        q, k, v = self._qkv(x, cos, sin)
        q = q.reshape(b, self.kv_heads, self.group, self.head_dim) * self.scale
        cache = self._write_cache(k, v, slots)
        idx = self._key_rows(k_index)  # [kv_heads, B, L]
        keys = ops.gather(cache, idx, 0)  # [kv_heads, B, L, D]
        vals = ops.gather(cache, idx + self.value_rows, 0)
        scores = self.bmm_t(q.transpose(1, 0, 2, 3), keys)  # [kv_heads, B, group, L]
        out = self._softmax_v(scores, bias, vals)  # [kv_heads, B, group, D]
        return self._finish(x, out.transpose(1, 0, 2, 3).reshape(b, self.q_size))


class LlamaModel(nn.Cell):
    """Weights, KV cache and the shared pieces of both steps."""

    def __init__(self, cfg: LlamaConfig, rt: RuntimeConfig, weights: dict[str, np.ndarray]):
        super().__init__()
        dtype = ms.float16 if rt.compute_dtype == "float16" else (
            ms.bfloat16 if rt.compute_dtype == "bfloat16" else ms.float32)
        if rt.attention_kernel == "ascend":
            # accepted by the config so Ascend YAMLs parse anywhere; never silently replaced
            raise ConfigError("config key 'attention_kernel': 'ascend' (fused ReshapeAndCache/PagedAttention) is "
                              "not implemented yet; use 'basic', which runs the same basic ops on Ascend")
        rt = resolve_kernels(rt)
        self.cfg, self.rt = cfg, rt
        self.embedding = _param(weights[EMBEDDING], EMBEDDING, dtype)
        self.layers = nn.CellList([DecoderLayer(cfg, rt, weights, i, dtype) for i in range(cfg.num_layers)])
        self.norm_out = RMSNorm(weights[FINAL_NORM], cfg.rms_norm_eps, FINAL_NORM, rt.tail_norm_rows)
        self.lm_head = Linear(_t(lm_head(weights, cfg)), "lm_head.weight", dtype, rt.head_matmul_rows)
        # where the head runs the panel kernel, its library's argmax replaces MindSpore's, which
        # read one row at a time (0.5 against 0.23 ms at 32 rows, 2.2 against 0.7 at 128)
        self.argmax = argmax_op() if rt.head_matmul_rows else None
        cos, sin = rope_tables(cfg)
        self.cos = _param(cos.astype(np.float32), "rope_cos", dtype)
        self.sin = _param(sin.astype(np.float32), "rope_sin", dtype)

    def embed(self, tokens):
        return ops.gather(self.embedding, tokens, 0)

    def rope(self, positions):
        """The rotary tables' rows of `positions`: cos, sin [N, 1, D] (the basic-op attention)."""
        return ops.gather(self.cos, positions, 0).expand_dims(1), ops.gather(self.sin, positions, 0).expand_dims(1)

    def head(self, hidden):
        """Logits [S, vocab] (fp32) and their argmax / max per row."""
        logits = ops.cast(self.lm_head(self.norm_out(hidden)), ms.float32)
        if self.lm_head.runs_kernel(hidden.shape[0]):
            ids, best = self.argmax(logits)
            return logits, ids, best
        best, ids = ops.max(logits, 1)
        return logits, ids.astype(ms.int32), best


class PrefillStep(nn.Cell):
    """Inputs: tokens/positions/slots [T]; k_index/k_seq/k_pos [C] for the context keys;
    q_seq [T] sequence id per token (-1 = padding); out_index [S] rows whose logits are wanted."""

    def __init__(self, model: LlamaModel):
        super().__init__()
        self.model = model

    def construct(self, tokens, positions, slots, q_seq, k_index, k_seq, k_pos, out_index):
        x = self.model.embed(tokens)
        cos, sin = self.model.rope(positions)
        same_seq = q_seq.reshape(-1, 1) == k_seq.reshape(1, -1)
        causal = k_pos.reshape(1, -1) <= positions.reshape(-1, 1)
        # padding queries may look at anything: keeps their rows finite, their output is unused
        mask = ops.logical_or(ops.logical_and(same_seq, causal), (q_seq < 0).reshape(-1, 1))
        group = self.model.cfg.num_heads // self.model.cfg.kv_heads
        bias = ops.tile(_mask_bias(mask), (group, 1))  # rows ordered (group, T) like the queries
        for layer in self.model.layers:
            x = layer.prefill(x, cos, sin, slots, k_index, bias)
        return self.model.head(ops.gather(x, out_index, 0))


class PagedPrefillStep(nn.Cell):
    """Prefill with the paged kernel: every new token is a query of its own that writes its K/V
    at its position and attends through its sequence's block table up to that position, so a
    prompt sees only itself (no [T, C] mask over the whole packed step). Tokens of any mix of
    sequences and positions may share a step.

    Inputs: tokens/positions [T]; block_tables [T, M] the block table of each token's sequence
    (padding: zeros, the trash block); out_index [S] rows whose logits are wanted."""

    def __init__(self, model: LlamaModel):
        super().__init__()
        if model.rt.attention_kernel != KERNEL_NAME:
            raise ValueError(f"PagedPrefillStep needs a model built with attention_kernel '{KERNEL_NAME}', "
                             f"this one has '{model.rt.attention_kernel}'")
        self.model = model

    def construct(self, tokens, positions, block_tables, out_index):
        x = self.model.embed(tokens)
        context_lens = positions + 1
        for layer in self.model.layers:
            x = layer.decode(x, self.model.cos, self.model.sin, None, block_tables, None, context_lens, None, True)
        return self.model.head(ops.gather(x, out_index, 0))


class DecodeStep(nn.Cell):
    """Inputs: tokens/positions/slots [B]; block_tables [B, max_blocks]; context_lens [B].

    `use_kernel=False` on a model built with the kernel gives the basic-op graph over the same
    weights and cache (for side-by-side comparisons); None follows the model's runtime config."""

    def __init__(self, model: LlamaModel, use_kernel: bool | None = None):
        super().__init__()
        built = model.rt.attention_kernel == KERNEL_NAME
        if use_kernel and not built:
            raise ValueError(f"DecodeStep(use_kernel=True) needs a model built with attention_kernel "
                             f"'{KERNEL_NAME}', this one has '{model.rt.attention_kernel}'")
        self.model = model
        self.block_offsets = Tensor(np.arange(model.rt.block_size, dtype=np.int32))
        self.block_size = model.rt.block_size
        self.use_kernel = built if use_kernel is None else use_kernel

    def construct(self, tokens, positions, slots, block_tables, context_lens):
        b = tokens.shape[0]
        x = self.model.embed(tokens)
        cos, sin = self.model.cos, self.model.sin      # the kernel takes the whole tables
        k_index = bias = None
        if not self.use_kernel:
            cos, sin = self.model.rope(positions)
            k_index = (block_tables.reshape(b, -1, 1) * self.block_size
                       + self.block_offsets.reshape(1, 1, -1)).reshape(b, -1)  # [B, L]
            length = k_index.shape[1]
            mask = ops.arange(0, length, dtype=ms.int32).reshape(1, -1) < context_lens.reshape(-1, 1)
            bias = _mask_bias(mask).reshape(b, 1, length)
        for layer in self.model.layers:
            x = layer.decode(x, cos, sin, slots, block_tables, k_index, context_lens, bias, self.use_kernel)
        return self.model.head(x)
