"""Model and runtime configuration, read from mindformers-style predict YAML files.

A predict YAML has the layout users know from mindformers:

    context: {mode: 0, device_target: CPU, device_id: 0}
    model:
      model_config: {hidden_size: ..., num_layers: ..., compute_dtype: float32, block_size: 16, ...}
    processor:
      tokenizer: {vocab_file: ...}

Architecture keys go to `LlamaConfig`; device, dtype, paging and kernel keys to `RuntimeConfig`.
Keys mindformers reads but that have no meaning in this kit are accepted with a warning; any
other key is an error that names it. Relative paths are resolved against the YAML file's folder.
"""
from __future__ import annotations

import dataclasses
import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration key is unknown or has an invalid value; the message names the key."""


@dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int = 32000
    hidden_size: int = 4096
    num_layers: int = 32
    num_heads: int = 32
    n_kv_heads: int | None = None           # None: multi-head attention (= num_heads)
    intermediate_size: int | None = None    # None: derived from multiple_of / ffn_dim_multiplier
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    seq_length: int = 4096                  # longest sequence (prompt + generated) served
    tie_word_embeddings: bool = False
    bos_token_id: int = 1
    eos_token_id: int = 2
    pad_token_id: int = 0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "seq_length", "multiple_of"):
            _require(name, getattr(self, name) > 0, "must be > 0")
        _require("num_heads", self.hidden_size % self.num_heads == 0, "must divide hidden_size")
        _require("n_kv_heads", self.num_heads % self.kv_heads == 0, "must divide num_heads")
        _require("rms_norm_eps", self.rms_norm_eps > 0, "must be > 0")
        if self.intermediate_size is not None:
            _require("intermediate_size", self.intermediate_size > 0, "must be > 0")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.num_heads

    @property
    def ffn_hidden(self) -> int:
        """Llama's SwiGLU width: 2/3 of 4*hidden, scaled, rounded up to multiple_of (11008 for 7B)."""
        if self.intermediate_size is not None:
            return self.intermediate_size
        h = int(2 * 4 * self.hidden_size / 3)
        if self.ffn_dim_multiplier is not None:
            h = int(self.ffn_dim_multiplier * h)
        return self.multiple_of * math.ceil(h / self.multiple_of)

    def num_params(self) -> int:
        d, f, v = self.hidden_size, self.ffn_hidden, self.vocab_size
        kv = self.kv_heads * self.head_dim
        layer = 2 * d * d + 2 * d * kv + 3 * d * f + 2 * d
        return v * d * (1 if self.tie_word_embeddings else 2) + self.num_layers * layer + d


DTYPES = ("float32", "float16", "bfloat16")
ATTENTION_KERNELS = {
    "auto": "cpu_paged on CPU, basic on Ascend",
    "basic": "gather/BatchMatMul/softmax ops over the padded context (any device)",
    "cpu_paged": "C++ kernel reading the paged cache in place up to each context length (CPU); "
                 "falls back to basic with a warning when it cannot be built",
    "ascend": "fused Ascend kernels: not implemented yet, the model refuses it when built",
}


ALL_ROWS = 1 << 20  # a row limit above any graph's rows


@dataclass(frozen=True)
class RuntimeConfig:
    device_target: str = "CPU"              # CPU | Ascend
    device_id: int = 0
    mode: int = 0                           # 0 GRAPH_MODE (the fast path), 1 PyNative (debugging)
    compute_dtype: str = "float32"          # fp32 on CPU; float16/bfloat16 on Ascend
    block_size: int = 16
    num_blocks: int = 512                   # KV blocks per layer, block 0 reserved as trash
    attention_kernel: str = "auto"          # decode attention, see ATTENTION_KERNELS
    small_matmul_rows: int = -1             # decode graphs of <= this many rows use the C++ small-batch
                                            # matmul (kernels/small_matmul.cpp; a second, packed copy of
                                            # the linear weights); 0 = off; -1 = auto
    fused_pointwise_rows: int = -1          # graphs of <= this many rows run RMSNorm and SiLU * up as
                                            # one C++ op each (kernels/pointwise.cpp); 0 = off; -1 = auto
    fused_layer_rows: int = -1              # graphs of <= this many rows run each decoder layer as one C++
                                            # op (kernels/decode_layer.cpp; needs attention_kernel
                                            # cpu_paged), and their final norm and LM head as the kernels
                                            # above; 0 = off; -1 = auto (every graph, ALL_ROWS)
    checkpoint: str = ""                    # mindformers .ckpt file or HF folder; "" = none
    tokenizer: str = ""                     # sentencepiece tokenizer.model
    compile_cache: str = ""                 # folder for MindSpore's persistent graph cache; "" = off

    def __post_init__(self) -> None:
        _require("device_target", self.device_target in ("CPU", "Ascend"), "must be CPU or Ascend")
        _require("mode", self.mode in (0, 1), "must be 0 (GRAPH_MODE) or 1 (PYNATIVE_MODE)")
        _require("compute_dtype", self.compute_dtype in DTYPES, f"must be one of {DTYPES}")
        _require("block_size", self.block_size > 0, "must be > 0")
        _require("num_blocks", self.num_blocks >= 2, "must be >= 2 (block 0 is reserved)")
        _require("attention_kernel", self.attention_kernel in ATTENTION_KERNELS,
                 f"must be one of {tuple(ATTENTION_KERNELS)}")
        if self.attention_kernel == "auto":
            # measured: experiments/2026-11-22-paged-attention-kernel
            object.__setattr__(self, "attention_kernel", "cpu_paged" if self.device_target == "CPU" else "basic")
        if self.small_matmul_rows == -1:
            # measured: experiments/2026-12-01-decode-kernels (decode step 15-25 % faster at 1-8 rows);
            # experiments/2026-12-01-matmul-tiles: more rows gave no served gain
            object.__setattr__(self, "small_matmul_rows", 8 if self.device_target == "CPU" else 0)
        _require("small_matmul_rows", self.small_matmul_rows >= 0, "must be >= 0 (0 = off) or -1 (auto)")
        if self.fused_pointwise_rows == -1:
            # measured: experiments/2026-12-01-fused-ops
            object.__setattr__(self, "fused_pointwise_rows", 8 if self.device_target == "CPU" else 0)
        _require("fused_pointwise_rows", self.fused_pointwise_rows >= 0, "must be >= 0 (0 = off) or -1 (auto)")
        if self.fused_layer_rows == -1:
            # measured: experiments/2026-12-03-decode-layer
            object.__setattr__(self, "fused_layer_rows", ALL_ROWS if self.attention_kernel == "cpu_paged" else 0)
        _require("fused_layer_rows", self.fused_layer_rows >= 0, "must be >= 0 (0 = off) or -1 (auto)")
        _require("fused_layer_rows", self.fused_layer_rows == 0 or self.attention_kernel == "cpu_paged",
                 "must be 0 unless attention_kernel is cpu_paged (the layer op runs that kernel)")
        if self.device_target == "CPU":
            _require("compute_dtype", self.compute_dtype == "float32",
                     "must be float32 on CPU (fp16 matmul is slower there, bf16 unsupported)")
            _require("attention_kernel", self.attention_kernel != "ascend",
                     "must be basic or cpu_paged on CPU (the fused kernels are Ascend-only)")
        else:
            _require("attention_kernel", self.attention_kernel != "cpu_paged", "cpu_paged is a CPU kernel")
            _require("small_matmul_rows", self.small_matmul_rows == 0, "must be 0 on Ascend (a CPU kernel)")
            _require("fused_pointwise_rows", self.fused_pointwise_rows == 0, "must be 0 on Ascend (a CPU kernel)")

    # After the layer ops a graph has no MindSpore MatMul left to keep its threads busy, and the C++
    # norm and panel matmul are the faster ones at any row count there
    # (experiments/2026-12-03-decode-layer): the final norm and the LM head follow the layers' limit.
    @property
    def tail_norm_rows(self) -> int:
        """Graphs of at most this many rows run the final RMSNorm as the C++ op."""
        return max(self.fused_pointwise_rows, self.fused_layer_rows)

    @property
    def head_matmul_rows(self) -> int:
        """Graphs of at most this many rows run the LM head (and its argmax) as the C++ kernels."""
        return max(self.small_matmul_rows, self.fused_layer_rows)


@dataclass(frozen=True)
class PredictConfig:
    model: LlamaConfig
    runtime: RuntimeConfig
    source: str = ""                        # the YAML file this came from

    def replace(self, **runtime_changes: Any) -> "PredictConfig":
        return dataclasses.replace(self, runtime=dataclasses.replace(self.runtime, **runtime_changes))


def _require(key: str, ok: bool, rule: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}': {rule}")


# mindformers model_config keys with no meaning here: accepted so users' files load, and named in
# a warning so nobody believes they have an effect.
_IGNORED_MODEL_KEYS = {
    "batch_size", "ignore_token_id", "layernorm_compute_type", "softmax_compute_type",
    "rotary_dtype", "param_init_type", "use_past", "scaling_factor", "extend_method", "is_dynamic",
    "offset", "repetition_penalty", "max_decode_length", "top_k", "top_p", "do_sample",
    "use_flash_attention", "use_paged_attention", "qkv_concat", "use_rope_slice",
    "fine_grain_interleave", "parallel_config", "use_past_shard", "checkpoint_name_or_path_ms",
    "embedding_init_type", "theta", "pretrain_seqlen", "compute_in_2d", "use_kvcache_op",
    "is_flexible_shape", "auto_map", "init_method_std", "block_table_dtype",
}
_RENAMED_MODEL_KEYS = {  # mindformers / HF spellings -> LlamaConfig field
    "n_kv_heads": "n_kv_heads", "num_key_value_heads": "n_kv_heads",
    "num_hidden_layers": "num_layers", "num_attention_heads": "num_heads",
    "max_position_embeddings": "seq_length", "rope_theta": "rope_theta",
}
_RUNTIME_MODEL_KEYS = {"compute_dtype", "block_size", "num_blocks", "checkpoint_name_or_path",
                       "attention_kernel", "small_matmul_rows", "fused_pointwise_rows",
                       "fused_layer_rows"}
_IGNORED_TOP_KEYS = {"seed", "run_mode", "use_parallel", "output_dir", "trainer", "parallel",
                     "moe_config", "auto_trans_ckpt", "src_strategy_path_or_dir", "load_ckpt_format",
                     "infer_precision_sync", "parallel_config", "micro_batch_interleave_num",
                     "recompute_config", "runner_config", "callbacks", "profile", "layer_scale",
                     "layer_decay", "lr_scale", "lr_scale_factor", "only_save_strategy",
                     "use_legacy", "pretrained_model_dir", "generation_config", "model_file"}


def _resolve(path: str, base: str) -> str:
    if not path:
        return ""
    path = os.path.expanduser(str(path))
    return path if os.path.isabs(path) else os.path.normpath(os.path.join(base, path))


def _warn_ignored(key: str) -> None:
    warnings.warn(f"config key '{key}' is accepted for compatibility but has no effect in this kit",
                  stacklevel=3)


def _check_mapping(key: str, value: Any) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"config key '{key}': must be a mapping, got {type(value).__name__}")
    return value


def _coerce(key: str, value: Any, typ: type) -> Any:
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value in ("True", "False", "true", "false"):
            return value.lower() == "true"
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-5" as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif typ is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"config key '{key}': expected {typ.__name__}, got {value!r}")


_FIELD_TYPES = {"int": int, "float": float, "bool": bool, "str": str,
                "int | None": int, "float | None": float}


def _fill(cls: type, key_prefix: str, values: dict) -> Any:
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in values:
            v = values[f.name]
            if v is None and "None" in str(f.type):
                kwargs[f.name] = None
            else:
                kwargs[f.name] = _coerce(f"{key_prefix}{f.name}", v, _FIELD_TYPES[str(f.type)])
    return cls(**kwargs)


def parse_predict_config(data: dict, base_dir: str = ".", source: str = "") -> PredictConfig:
    data = _check_mapping("<root>", data)
    known_top = {"context", "model", "processor"}
    for key in data:
        if key in _IGNORED_TOP_KEYS:
            _warn_ignored(key)
        elif key not in known_top:
            raise ConfigError(f"config key '{key}': unknown (allowed: {sorted(known_top)})")

    context = _check_mapping("context", data.get("context"))
    runtime: dict[str, Any] = {}
    for key, value in context.items():
        if key in ("device_target", "device_id", "mode"):
            runtime[key] = value
        elif key == "compile_cache":
            runtime[key] = _resolve(_coerce("context.compile_cache", value, str), base_dir)
        else:
            _warn_ignored(f"context.{key}")

    model = _check_mapping("model", data.get("model"))
    for key in model:
        if key == "arch":
            continue
        if key != "model_config":
            raise ConfigError(f"config key 'model.{key}': unknown (allowed: model_config, arch)")
    arch_fields = {f.name for f in dataclasses.fields(LlamaConfig)}
    arch: dict[str, Any] = {}
    for key, value in _check_mapping("model.model_config", model.get("model_config")).items():
        full = f"model.model_config.{key}"
        if key == "type":
            _require(full, value == "LlamaConfig", "must be LlamaConfig (this kit serves Llama-2)")
        elif key in _RUNTIME_MODEL_KEYS:
            if key == "checkpoint_name_or_path":
                runtime["checkpoint"] = _resolve(_coerce(full, value, str), base_dir)
            else:
                runtime[key] = value
        elif key in _RENAMED_MODEL_KEYS:
            arch[_RENAMED_MODEL_KEYS[key]] = value
        elif key in arch_fields:
            arch[key] = value
        elif key in _IGNORED_MODEL_KEYS:
            _warn_ignored(full)
        else:
            raise ConfigError(f"config key '{full}': unknown")

    processor = _check_mapping("processor", data.get("processor"))
    tokenizer = _check_mapping("processor.tokenizer", processor.get("tokenizer"))
    if tokenizer.get("vocab_file"):
        runtime["tokenizer"] = _resolve(_coerce("processor.tokenizer.vocab_file",
                                                tokenizer["vocab_file"], str), base_dir)

    return PredictConfig(model=_fill(LlamaConfig, "model.model_config.", arch),
                         runtime=_fill(RuntimeConfig, "", runtime), source=source)


def load_predict_config(path: str) -> PredictConfig:
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    return parse_predict_config(data, os.path.dirname(os.path.abspath(path)), source=path)


def config_to_hf(cfg: LlamaConfig) -> dict:
    """HF transformers `config.json` contents for this architecture."""
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.ffn_hidden, "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.kv_heads,
        "rms_norm_eps": cfg.rms_norm_eps, "rope_theta": cfg.rope_theta,
        "max_position_embeddings": cfg.seq_length, "tie_word_embeddings": cfg.tie_word_embeddings,
        "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id,
        "pad_token_id": cfg.pad_token_id, "hidden_act": "silu", "torch_dtype": "float32",
    }


def config_from_hf(hf: dict) -> LlamaConfig:
    """LlamaConfig from an HF `config.json` dict (unknown HF keys are ignored: HF files carry many)."""
    def get(key: str, default: Any = None) -> Any:
        return hf.get(key, default)
    heads = int(get("num_attention_heads"))
    return LlamaConfig(
        vocab_size=int(get("vocab_size")), hidden_size=int(get("hidden_size")),
        intermediate_size=int(get("intermediate_size")), num_layers=int(get("num_hidden_layers")),
        num_heads=heads, n_kv_heads=int(get("num_key_value_heads", heads)),
        rms_norm_eps=float(get("rms_norm_eps", 1e-5)), rope_theta=float(get("rope_theta", 10000.0)),
        seq_length=int(get("max_position_embeddings", 4096)),
        tie_word_embeddings=bool(get("tie_word_embeddings", False)),
        bos_token_id=int(get("bos_token_id", 1) or 1), eos_token_id=int(get("eos_token_id", 2) or 2),
        pad_token_id=int(get("pad_token_id", 0) or 0),
    )
