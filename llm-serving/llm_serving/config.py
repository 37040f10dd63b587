"""Serving configuration: the contest's `llama_7b_kbk_pa_dyn.yaml` layout, validated.

    model_config:   model_name, model_cfg_path (the mindformers predict YAML: architecture, weights,
                    dtype), max_generate_length, end_token, vocab_size, decode_batch_size (decode
                    batch buckets), zactivate_len (decode context-length buckets), prefill_batch_size
                    (max prompts in one prefill step), pad_token_id, ...
    serving_config: server_ip, server_port, agent_ports, start_device_id, plus queue / API options
    pa_config:      num_blocks, block_size, decode_seq_length
    scheduler_config (this kit): prefill token ladder, prefix caching, mixed prefill + decode steps
                    (mixed_rows, with the cpu_paged kernel), the baseline policy
    tokenizer:      vocab_file

Keys the contest kit read but that mean nothing here (exported-graph paths, GE options, waiting
times) are accepted with a warning naming them; unknown keys and invalid values are errors
naming the key. Relative paths resolve against the YAML file's folder.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any

import yaml

from msllama.config import ConfigError, PredictConfig, load_predict_config
from msllama.kernels import resolve_kernels
from msllama.kernels.paged_attention import KERNEL_NAME
from msllama.runner import Ladder


@dataclass(frozen=True)
class ServingConfig:
    predict: PredictConfig                  # model side: architecture, runtime, weights, tokenizer
    ladder: Ladder
    model_name: str = "llama2"
    max_generate_length: int = 4096         # prompt + generated tokens, at most
    end_token: int = 2
    max_decode_batch: int = 64              # running sequences per decode step (largest bucket)
    max_prefill_seqs: int = 64              # prompts per prefill step
    enable_prefix_caching: bool = True
    host: str = "127.0.0.1"
    port: int = 8835
    agent_ports: tuple[int, ...] = (16002,)
    start_device_id: int = 0
    max_queue_size: int = 1024              # waiting requests; beyond it new ones get 503
    max_body_bytes: int = 1 << 20
    api_key: str = ""                       # "" = no authentication
    drain_seconds: float = 10.0             # on shutdown, how long in-flight requests may finish
    save_logits_dir: str = ""               # task 2: folder for logits rows ("" = off)
    save_logits_every: int = 100            # task 2: positions p with p % this == 0 (p > 0)
    source: str = ""

    @property
    def block_size(self) -> int:
        return self.predict.runtime.block_size

    @property
    def num_blocks(self) -> int:
        return self.predict.runtime.num_blocks

    @property
    def tokenizer_path(self) -> str:
        return self.predict.runtime.tokenizer


_IGNORED = {
    "model_path", "basic_inputs", "extra_inputs", "warmup_inputs", "post_model_ini",
    "model_config.model_type", "model_config.seq_type", "model_config.batch_waiting_time",
    "model_config.decode_batch_waiting_time", "model_config.current_index",
    "model_config.model_dtype", "model_config.backend", "model_config.batching_strategy",
    "model_config.page_attention", "model_config.seq_length", "model_config.prefill_ini",
    "model_config.decode_ini", "model_config.tp_size", "serving_config.prefill_batch_size",
    "pa_config.decode_seq_length",
}
_SECTIONS = {"model_config", "serving_config", "pa_config", "scheduler_config", "tokenizer"}


def _int_list(key: str, value: Any) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if (not isinstance(value, list) or not value
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
        raise ConfigError(f"config key '{key}': must be a non-empty list of positive integers")
    if list(value) != sorted(set(value)):
        raise ConfigError(f"config key '{key}': must be strictly increasing")
    return tuple(value)


def _typed(key: str, value: Any, typ: type, positive: bool = False) -> Any:
    ok = isinstance(value, typ) and not (typ is not bool and isinstance(value, bool))
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if typ is bool and isinstance(value, str) and value in ("True", "False", "true", "false"):
        value, ok = value.lower() == "true", True
    if not ok:
        raise ConfigError(f"config key '{key}': expected {typ.__name__}, got {value!r}")
    if positive and value <= 0:
        raise ConfigError(f"config key '{key}': must be > 0")
    return value


def parse_serving_config(data: dict, base_dir: str = ".", source: str = "") -> ServingConfig:
    if not isinstance(data, dict):
        raise ConfigError("serving config: the file must hold a mapping")
    sections: dict[str, dict] = {}
    for key, value in data.items():
        if key in _IGNORED:
            warnings.warn(f"config key '{key}' is accepted for compatibility but has no effect in this kit",
                          stacklevel=2)
        elif key in _SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{key}': must be a mapping")
            sections[key] = value
        else:
            raise ConfigError(f"config key '{key}': unknown (allowed: {sorted(_SECTIONS)})")

    kw: dict[str, Any] = {}
    runtime: dict[str, Any] = {}
    ladder: dict[str, Any] = {}
    predict_path = ""
    tokenizer_path = ""

    def each(section: str):
        for key, value in sections.get(section, {}).items():
            full = f"{section}.{key}"
            if full in _IGNORED:
                warnings.warn(f"config key '{full}' is accepted for compatibility but has no effect "
                              "in this kit", stacklevel=3)
                continue
            yield key, full, value

    def path(full: str, value: Any) -> str:
        p = os.path.expanduser(_typed(full, value, str))
        return p if os.path.isabs(p) else os.path.normpath(os.path.join(base_dir, p))

    for key, full, value in each("model_config"):
        if key == "model_name":
            kw["model_name"] = _typed(full, value, str)
        elif key == "model_cfg_path":
            predict_path = path(full, value)
        elif key in ("max_generate_length", "end_token", "vocab_size", "pad_token_id"):
            v = _typed(full, value, int)
            if key == "max_generate_length":
                kw[key] = _typed(full, v, int, positive=True)
            elif key == "end_token":
                kw[key] = v
            else:
                kw.setdefault("_check", {})[key] = v
        elif key == "decode_batch_size":
            ladder["decode_batches"] = _int_list(full, value)
        elif key == "zactivate_len":
            ladder["_context_lens"] = (full, _int_list(full, value))
        elif key == "prefill_batch_size":
            batches = _int_list(full, value)
            kw["max_prefill_seqs"] = batches[-1]
        else:
            raise ConfigError(f"config key '{full}': unknown")

    for key, full, value in each("serving_config"):
        if key in ("server_ip", "api_key", "save_logits_dir"):
            kw["host" if key == "server_ip" else key] = (
                path(full, value) if key == "save_logits_dir" and value else _typed(full, value, str))
        elif key == "server_port":
            kw["port"] = _typed(full, value, int, positive=True)
        elif key == "agent_ports":
            kw["agent_ports"] = tuple(_typed(full, p, int, positive=True)
                                      for p in (value if isinstance(value, list) else [value]))
        elif key in ("start_device_id",):
            kw[key] = _typed(full, value, int)
        elif key in ("max_queue_size", "max_body_bytes", "save_logits_every"):
            kw[key] = _typed(full, value, int, positive=True)
        elif key == "drain_seconds":
            kw[key] = _typed(full, value, float, positive=True)
        else:
            raise ConfigError(f"config key '{full}': unknown")

    for key, full, value in each("pa_config"):
        if key in ("num_blocks", "block_size"):
            runtime[key] = _typed(full, value, int, positive=True)
        else:
            raise ConfigError(f"config key '{full}': unknown")

    for key, full, value in each("scheduler_config"):
        if key == "prefill_tokens":
            ladder["prefill_tokens"] = _int_list(full, value)
        elif key == "prefill_context_factors":
            ladder["prefill_context_factors"] = _int_list(full, value)
        elif key == "prefill_rows_per_token":
            ladder[key] = _typed(full, value, float, positive=True)
        elif key == "mixed_rows":
            ladder[key] = _typed(full, value, int)
        elif key == "enable_prefix_caching":
            kw[key] = _typed(full, value, bool)
        elif key == "compile_cache":
            runtime["compile_cache"] = path(full, value) if value else ""
        else:
            raise ConfigError(f"config key '{full}': unknown")

    for key, full, value in each("tokenizer"):
        if key == "vocab_file":
            tokenizer_path = path(full, value)
        elif key == "type":
            if value != "LlamaTokenizer":
                raise ConfigError(f"config key '{full}': must be LlamaTokenizer (sentencepiece)")
        else:
            raise ConfigError(f"config key '{full}': unknown")

    if not predict_path:
        raise ConfigError("config key 'model_config.model_cfg_path': required (the mindformers predict YAML)")
    if not os.path.isfile(predict_path):
        raise ConfigError(f"config key 'model_config.model_cfg_path': file not found: {predict_path}")
    predict = load_predict_config(predict_path)
    if tokenizer_path:
        runtime["tokenizer"] = tokenizer_path
    if runtime:
        predict = predict.replace(**runtime)
    if not predict.runtime.tokenizer:
        raise ConfigError("config key 'tokenizer.vocab_file': required (here or in the predict YAML)")

    for key, v in kw.pop("_check", {}).items():
        expected = predict.model.vocab_size if key == "vocab_size" else predict.model.pad_token_id
        if v != expected:
            raise ConfigError(f"config key 'model_config.{key}': {v} disagrees with the model's {expected}")

    bs = predict.runtime.block_size
    if "_context_lens" in ladder:
        full, lens = ladder.pop("_context_lens")
        bad = [n for n in lens if n % bs]
        if bad:
            raise ConfigError(f"config key '{full}': every length must be a multiple of block_size {bs}, got {bad}")
        ladder["decode_blocks"] = tuple(n // bs for n in lens)
    # the agent builds the same kernels on this machine (or falls back the same way)
    attention = resolve_kernels(predict.runtime).attention_kernel
    ladder["paged_prefill"] = attention == KERNEL_NAME
    if ladder.get("mixed_rows", 0) and not ladder["paged_prefill"]:
        raise ConfigError("config key 'scheduler_config.mixed_rows': needs the paged prefill "
                          f"(attention_kernel '{KERNEL_NAME}'), this model has '{attention}'; set 0")
    try:
        lad = Ladder(**ladder)
    except ValueError as e:
        raise ConfigError(f"config key 'scheduler_config': {e}") from None

    max_len = kw.get("max_generate_length", predict.model.seq_length)
    kw["max_generate_length"] = max_len
    if max_len > predict.model.seq_length:
        raise ConfigError(f"config key 'model_config.max_generate_length': {max_len} exceeds the model's "
                          f"seq_length {predict.model.seq_length}")
    if lad.decode_blocks[-1] * bs < max_len:
        raise ConfigError(f"config key 'model_config.zactivate_len': the largest ({lad.decode_blocks[-1] * bs}) "
                          f"must be >= max_generate_length {max_len}")
    if lad.decode_blocks[-1] > predict.runtime.num_blocks - 1:
        raise ConfigError("config key 'pa_config.num_blocks': too few blocks for one sequence of "
                          f"max_generate_length ({lad.decode_blocks[-1]} + 1 trash block)")
    if not lad.paged_prefill and lad.max_prefill_tokens * lad.prefill_context_factors[-1] < max_len:
        raise ConfigError("config key 'scheduler_config.prefill_context_factors': the largest prefill step "
                          f"({lad.max_prefill_tokens} tokens x {lad.prefill_context_factors[-1]}) must hold "
                          f"max_generate_length {max_len} context keys")
    if lad.mixed_rows and min(lad.mixed_rows, lad.max_prefill_tokens) <= lad.max_decode_batch:
        raise ConfigError(f"config key 'scheduler_config.mixed_rows': {lad.mixed_rows} rows and the largest prefill "
                          f"step ({lad.max_prefill_tokens} tokens) must both exceed the largest decode batch "
                          f"{lad.max_decode_batch}, so that prompts can join a full decode batch")
    kw["max_decode_batch"] = lad.max_decode_batch
    kw.setdefault("max_prefill_seqs", 64)
    return ServingConfig(predict=predict, ladder=lad, source=source, **kw)


def load_serving_config(path: str) -> ServingConfig:
    if not os.path.isfile(path):
        raise ConfigError(f"serving config file not found: {path}")
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    return parse_serving_config(data, os.path.dirname(os.path.abspath(path)), source=os.path.abspath(path))
