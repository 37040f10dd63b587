"""Serving-YAML parsing: the contest's keys load, unused ones warn, wrong ones name the key."""
from __future__ import annotations

import os
import warnings

import pytest
import yaml

from llm_serving.config import ConfigError, load_serving_config, parse_serving_config
from msllama.assets import ROOT

CONFIGS = os.path.join(ROOT, "llm-serving", "configs", "llama")


def debug_data() -> dict:
    with open(os.path.join(CONFIGS, "llama_7b_kbk_pa_dyn_debug.yaml")) as f:
        return yaml.safe_load(f)


def parse(data: dict):
    return parse_serving_config(data, CONFIGS)


def test_shipped_configs_load_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        debug = load_serving_config(os.path.join(CONFIGS, "llama_7b_kbk_pa_dyn_debug.yaml"))
        ascend = load_serving_config(os.path.join(CONFIGS, "llama_7b_kbk_pa_dyn.yaml"))
    assert debug.port == 8835 and debug.host == "127.0.0.1" and debug.max_decode_batch == 64
    assert debug.ladder.decode_blocks == (8, 16, 32, 64)                  # zactivate_len / block_size
    assert ascend.max_decode_batch == 128 and ascend.num_blocks == 1792
    assert ascend.predict.runtime.compute_dtype == "float16"


def test_keys_the_contest_kit_read_but_never_used_warn():
    data = debug_data()
    data["model_path"] = {"prefill_model": ["x.mindir"]}
    data["model_config"]["batch_waiting_time"] = 0.0
    data["model_config"]["backend"] = "kbk"
    with pytest.warns(UserWarning) as record:
        parse(data)
    text = " ".join(str(w.message) for w in record)
    for key in ("'model_path'", "'model_config.batch_waiting_time'", "'model_config.backend'"):
        assert key in text


@pytest.mark.parametrize("section, key, value, message", [
    ("model_config", "decode_batch_sise", [1], "'model_config.decode_batch_sise': unknown"),
    ("model_config", "decode_batch_size", [4, 2], "'model_config.decode_batch_size': must be strictly increasing"),
    ("model_config", "decode_batch_size", [0, 2], "must be a non-empty list of positive integers"),
    ("model_config", "zactivate_len", [100, 1024], "multiple of block_size 16"),
    ("model_config", "zactivate_len", [128, 512], "must be >= max_generate_length 1024"),
    ("model_config", "max_generate_length", 4096, "exceeds the model's seq_length 1024"),
    ("model_config", "vocab_size", 32001, "disagrees with the model's 32000"),
    ("model_config", "model_cfg_path", "missing.yaml", "file not found"),
    ("serving_config", "server_port", "8835", "'serving_config.server_port': expected int"),
    ("serving_config", "max_queue_size", 0, "'serving_config.max_queue_size': must be > 0"),
    ("pa_config", "num_blocks", 16, "too few blocks"),
    ("scheduler_config", "mixed_rows", 64, r"'scheduler_config.mixed_rows': 64 rows .* must both exceed the "
                                           "largest decode batch 64"),
    ("scheduler_config", "mixed_rows", -1, "'mixed_rows': must be >= 0"),
    ("tokenizer", "type", "GPT2Tokenizer", "must be LlamaTokenizer"),
])
def test_bad_values_name_the_key(section, key, value, message):
    data = debug_data()
    data[section][key] = value
    with pytest.raises(ConfigError, match=message):
        parse(data)


def test_context_keys_bound_prefill_steps_only_with_the_basic_attention():
    # the Ascend config runs basic ops: a prefill step must hold max_generate_length context keys
    with open(os.path.join(CONFIGS, "llama_7b_kbk_pa_dyn.yaml")) as f:
        ascend = yaml.safe_load(f)
    assert not parse(ascend).ladder.paged_prefill
    ascend["scheduler_config"].update(prefill_tokens=[1024], prefill_context_factors=[1])
    with pytest.raises(ConfigError, match="must hold max_generate_length"):
        parse(ascend)
    ascend["scheduler_config"]["mixed_rows"] = 256
    with pytest.raises(ConfigError, match="'scheduler_config.mixed_rows': needs the paged prefill"):
        parse(ascend)
    # with the cpu_paged kernel the context does not shape prefill graphs (and mixed steps may run)
    data = debug_data()
    data["scheduler_config"].update(prefill_tokens=[128], prefill_context_factors=[1], mixed_rows=96)
    lad = parse(data).ladder
    assert lad.paged_prefill and lad.mixed_rows == 96


def test_an_unknown_section_is_an_error():
    data = debug_data()
    data["servng_config"] = {}
    with pytest.raises(ConfigError, match="'servng_config': unknown"):
        parse(data)
