"""Predict-YAML parsing: known keys load, ignored ones warn, wrong ones are errors naming the key."""
from __future__ import annotations

import pytest
import yaml

from msllama.assets import BENCH_PREDICT_YAML, DEBUG_PREDICT_YAML, ROOT
from msllama.config import ConfigError, load_predict_config, parse_predict_config


def base() -> dict:
    return {"context": {"mode": 0, "device_target": "CPU"},
            "model": {"model_config": {"type": "LlamaConfig", "hidden_size": 64, "num_layers": 2, "num_heads": 4,
                                       "n_kv_heads": 2, "vocab_size": 512, "seq_length": 128,
                                       "compute_dtype": "float32", "block_size": 16, "num_blocks": 32,
                                       "checkpoint_name_or_path": "w.ckpt"}},
            "processor": {"tokenizer": {"vocab_file": "tok.model"}}}


def test_shipped_configs_load():
    for path in (DEBUG_PREDICT_YAML, BENCH_PREDICT_YAML):
        pc = load_predict_config(path)
        assert pc.runtime.device_target == "CPU" and pc.runtime.compute_dtype == "float32"
    seven_b = load_predict_config(f"{ROOT}/mindformers/configs/llama2/predict_llama2_7b.yaml")
    assert seven_b.runtime.device_target == "Ascend" and seven_b.runtime.compute_dtype == "float16"
    assert seven_b.model.ffn_hidden == 11008 and seven_b.model.num_params() == 6_738_415_616


def test_paths_resolve_against_the_yaml_folder(tmp_path):
    pc = parse_predict_config(base(), str(tmp_path))
    assert pc.runtime.checkpoint == str(tmp_path / "w.ckpt") and pc.runtime.tokenizer == str(tmp_path / "tok.model")
    assert pc.model.kv_heads == 2 and pc.model.head_dim == 16


@pytest.mark.parametrize("section, key, value, message", [
    ("model.model_config", "hidden_sise", 64, "'model.model_config.hidden_sise': unknown"),
    ("model.model_config", "num_heads", 5, "'num_heads': must divide hidden_size"),
    ("model.model_config", "n_kv_heads", 3, "'n_kv_heads': must divide num_heads"),
    ("model.model_config", "num_layers", "two", "'model.model_config.num_layers': expected int"),
    ("model.model_config", "compute_dtype", "float16", "'compute_dtype': must be float32 on CPU"),
    ("model.model_config", "num_blocks", 1, "'num_blocks': must be >= 2"),
    ("model.model_config", "type", "GPT2Config", "must be LlamaConfig"),
    ("context", "device_target", "GPU", "'device_target': must be CPU or Ascend"),
    ("context", "mode", 2, "'mode': must be 0"),
])
def test_bad_keys_and_values_name_the_key(section, key, value, message):
    data = base()
    target = data
    for part in section.split("."):
        target = target[part]
    target[key] = value
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_predict_config(data)


def test_unknown_top_level_key_is_an_error_and_known_unused_keys_warn():
    data = base()
    data["trainer"] = {"type": "CausalLanguageModelingTrainer"}
    data["model"]["model_config"]["use_past"] = True
    with pytest.warns(UserWarning) as record:
        parse_predict_config(data)
    messages = " ".join(str(w.message) for w in record)
    assert "'trainer'" in messages and "'model.model_config.use_past'" in messages
    del data["trainer"], data["model"]["model_config"]["use_past"]
    data["modle"] = {}
    with pytest.raises(ConfigError, match="'modle': unknown"):
        parse_predict_config(data)


def test_yaml_1_1_float_strings_are_read_as_floats(tmp_path):
    data = base()
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data).replace("hidden_size: 64", "hidden_size: 64\n    rms_norm_eps: 1e-6"))
    assert load_predict_config(str(path)).model.rms_norm_eps == 1e-6
