"""Weight names, shapes and the deterministic random initialisation of debug/bench models.

Weights travel through the kit as `dict[str, np.ndarray]` keyed by mindformers' parameter names
(the names of a mindformers Llama-2 `.ckpt`); Dense weights are `[out_features, in_features]`.
"""
from __future__ import annotations

import numpy as np

from .config import LlamaConfig

EMBEDDING = "model.tok_embeddings.embedding_weight"
FINAL_NORM = "model.norm_out.weight"
LM_HEAD = "lm_head.weight"


def layer_names(i: int) -> dict[str, str]:
    p = f"model.layers.{i}."
    return {
        "wq": p + "attention.wq.weight", "wk": p + "attention.wk.weight",
        "wv": p + "attention.wv.weight", "wo": p + "attention.wo.weight",
        "w1": p + "feed_forward.w1.weight",  # gate
        "w2": p + "feed_forward.w2.weight",  # down
        "w3": p + "feed_forward.w3.weight",  # up
        "attention_norm": p + "attention_norm.weight", "ffn_norm": p + "ffn_norm.weight",
    }


def expected_shapes(cfg: LlamaConfig) -> dict[str, tuple[int, ...]]:
    d, f, v = cfg.hidden_size, cfg.ffn_hidden, cfg.vocab_size
    kv = cfg.kv_heads * cfg.head_dim
    shapes: dict[str, tuple[int, ...]] = {EMBEDDING: (v, d)}
    for i in range(cfg.num_layers):
        n = layer_names(i)
        shapes.update({n["wq"]: (d, d), n["wk"]: (kv, d), n["wv"]: (kv, d), n["wo"]: (d, d),
                       n["w1"]: (f, d), n["w2"]: (d, f), n["w3"]: (f, d),
                       n["attention_norm"]: (d,), n["ffn_norm"]: (d,)})
    shapes[FINAL_NORM] = (d,)
    if not cfg.tie_word_embeddings:
        shapes[LM_HEAD] = (v, d)
    return shapes


def lm_head(weights: dict[str, np.ndarray], cfg: LlamaConfig) -> np.ndarray:
    return weights[EMBEDDING] if cfg.tie_word_embeddings else weights[LM_HEAD]


def random_weights(cfg: LlamaConfig, seed: int = 0, logit_scale: float = 8.0) -> dict[str, np.ndarray]:
    """Random fp32 weights with peaked next-token distributions.

    The LM head is scaled so logits have a standard deviation of about `logit_scale`: the gap
    between the two best tokens is then usually far above fp32 rounding, so greedy decoding gives
    the same tokens in every implementation. The EOS row is zero (logit 0, far below the maximum),
    so a debug model generates exactly max_new_tokens, which keeps load tests predictable.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for name, shape in expected_shapes(cfg).items():
        if len(shape) == 1:  # RMSNorm gains around 1
            w = 1.0 + 0.1 * rng.standard_normal(shape)
        elif name == EMBEDDING:
            w = rng.standard_normal(shape)
        elif name == LM_HEAD:
            w = rng.standard_normal(shape) * (logit_scale / np.sqrt(shape[1]))
        else:  # residual branches kept small so the residual stream stays well conditioned
            w = rng.standard_normal(shape) * (0.5 / np.sqrt(shape[1]))
        out[name] = w.astype(np.float32)
    if cfg.tie_word_embeddings:
        out[EMBEDDING] *= logit_scale / np.sqrt(cfg.hidden_size)
    lm_head(out, cfg)[cfg.eos_token_id] = 0.0
    return out
