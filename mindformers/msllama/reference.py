"""Dense float64 numpy Llama-2: the ground truth for tests and for `file_npy_base`.

Deliberately independent of the MindSpore path: no paging, no buckets, no shared code beyond the
weight names. Rotary embedding uses the rotate-half layout of HF and mindformers checkpoints.
"""
from __future__ import annotations

import numpy as np

from .config import LlamaConfig
from .weights import EMBEDDING, FINAL_NORM, layer_names, lm_head


def _rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def _rotate_half(x: np.ndarray) -> np.ndarray:
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


class ReferenceModel:
    def __init__(self, cfg: LlamaConfig, weights: dict[str, np.ndarray]):
        self.cfg = cfg
        self.w = {k: np.asarray(v, dtype=np.float64) for k, v in weights.items()}
        self.head = np.asarray(lm_head(weights, cfg), dtype=np.float64)
        d = cfg.head_dim
        self.inv_freq = 1.0 / (cfg.rope_theta ** (np.arange(0, d, 2, dtype=np.float64) / d))

    def new_cache(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per-layer (K, V) of shape [kv_heads, 0, head_dim]; grown by `forward`."""
        c = self.cfg
        empty = np.zeros((c.kv_heads, 0, c.head_dim))
        return [(empty, empty) for _ in range(c.num_layers)]

    def forward(self, token_ids: list[int], cache: list | None = None) -> np.ndarray:
        """Logits [len(token_ids), vocab] for tokens following what `cache` already holds.

        Without a cache the tokens are a whole sequence from position 0. With one, it is extended
        in place so repeated calls decode token by token.
        """
        c = self.cfg
        if cache is None:
            cache = self.new_cache()
        start = cache[0][0].shape[1]
        n = len(token_ids)
        pos = np.arange(start, start + n, dtype=np.float64)
        angles = pos[:, None] * self.inv_freq[None, :]
        cos = np.concatenate([np.cos(angles)] * 2, axis=-1)  # [n, head_dim]
        sin = np.concatenate([np.sin(angles)] * 2, axis=-1)
        group = c.num_heads // c.kv_heads
        total = start + n
        # query i (absolute position start+i) sees keys 0..start+i
        mask = np.arange(total)[None, :] <= (start + np.arange(n))[:, None]

        x = self.w[EMBEDDING][np.asarray(token_ids)]
        for i in range(c.num_layers):
            L = layer_names(i)
            h = _rms_norm(x, self.w[L["attention_norm"]], c.rms_norm_eps)
            q = (h @ self.w[L["wq"]].T).reshape(n, c.num_heads, c.head_dim).transpose(1, 0, 2)
            k = (h @ self.w[L["wk"]].T).reshape(n, c.kv_heads, c.head_dim).transpose(1, 0, 2)
            v = (h @ self.w[L["wv"]].T).reshape(n, c.kv_heads, c.head_dim).transpose(1, 0, 2)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            k_all = np.concatenate([cache[i][0], k], axis=1)
            v_all = np.concatenate([cache[i][1], v], axis=1)
            cache[i] = (k_all, v_all)
            k_rep = np.repeat(k_all, group, axis=0)  # [heads, total, d]
            v_rep = np.repeat(v_all, group, axis=0)
            scores = q @ k_rep.transpose(0, 2, 1) / np.sqrt(c.head_dim)
            scores = np.where(mask[None], scores, -np.inf)
            scores -= scores.max(axis=-1, keepdims=True)
            p = np.exp(scores)
            p /= p.sum(axis=-1, keepdims=True)
            attn = (p @ v_rep).transpose(1, 0, 2).reshape(n, c.hidden_size)
            x = x + attn @ self.w[L["wo"]].T
            h = _rms_norm(x, self.w[L["ffn_norm"]], c.rms_norm_eps)
            gate = h @ self.w[L["w1"]].T
            up = h @ self.w[L["w3"]].T
            x = x + (gate / (1.0 + np.exp(-gate)) * up) @ self.w[L["w2"]].T
        return _rms_norm(x, self.w[FINAL_NORM], c.rms_norm_eps) @ self.head.T

    def greedy(self, prompt_ids: list[int], max_new_tokens: int) -> tuple[list[int], list[np.ndarray]]:
        """Greedy continuation and the next-token logits row of every step (prompt's last first)."""
        cache = self.new_cache()
        logits = self.forward(prompt_ids, cache)[-1]
        out, rows = [], []
        for _ in range(max_new_tokens):
            rows.append(logits)
            tok = int(np.argmax(logits))
            out.append(tok)
            if tok == self.cfg.eos_token_id:
                break
            logits = self.forward([tok], cache)[-1]
        return out, rows
