"""Checkpoint loading/saving (.ckpt and HF safetensors) and the converter CLI, on real files."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import mindspore
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from msllama.checkpoint import (HF_CONFIG, HF_INDEX, HF_SINGLE, CheckpointError, hf_names, load_weights,
                                read_hf_config, save_ckpt, save_hf)
from msllama.config import LlamaConfig, config_to_hf
from msllama.convert import main as convert_main
from msllama.weights import EMBEDDING, FINAL_NORM, LM_HEAD, expected_shapes, random_weights

UNTIED = LlamaConfig(vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, n_kv_heads=2,
                     multiple_of=32, seq_length=128)
TIED = LlamaConfig(vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, n_kv_heads=2,
                   multiple_of=32, seq_length=128, tie_word_embeddings=True)
WQ0, WK0 = "model.layers.0.attention.wq.weight", "model.layers.0.attention.wk.weight"

YAML = """\
model:
  model_config:
    vocab_size: 512
    hidden_size: 64
    num_layers: 2
    num_heads: 4
    n_kv_heads: 2
    multiple_of: 32
    seq_length: 128
"""


def assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert list(a) == list(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        assert a[name].tobytes() == b[name].tobytes(), name


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def write_hf_by_hand(folder, cfg: LlamaConfig, tensors: dict[str, np.ndarray]) -> None:
    """An HF folder written with the safetensors library itself, not with save_hf."""
    os.makedirs(folder, exist_ok=True)
    save_file(tensors, os.path.join(folder, HF_SINGLE), metadata={"format": "pt"})
    with open(os.path.join(folder, HF_CONFIG), "w") as f:
        json.dump(config_to_hf(cfg), f)


def hf_tensors(cfg: LlamaConfig, seed: int = 0) -> dict[str, np.ndarray]:
    names = hf_names(cfg)
    return {names[k]: w for k, w in random_weights(cfg, seed).items()}


def test_hf_name_mapping():
    names = hf_names(UNTIED)
    assert len(names) == len(expected_shapes(UNTIED)) == 9 * UNTIED.num_layers + 3
    assert {k: v for k, v in names.items() if ".layers.1." not in k} == {
        "model.tok_embeddings.embedding_weight": "model.embed_tokens.weight",
        "model.layers.0.attention.wq.weight": "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.attention.wk.weight": "model.layers.0.self_attn.k_proj.weight",
        "model.layers.0.attention.wv.weight": "model.layers.0.self_attn.v_proj.weight",
        "model.layers.0.attention.wo.weight": "model.layers.0.self_attn.o_proj.weight",
        "model.layers.0.feed_forward.w1.weight": "model.layers.0.mlp.gate_proj.weight",
        "model.layers.0.feed_forward.w2.weight": "model.layers.0.mlp.down_proj.weight",
        "model.layers.0.feed_forward.w3.weight": "model.layers.0.mlp.up_proj.weight",
        "model.layers.0.attention_norm.weight": "model.layers.0.input_layernorm.weight",
        "model.layers.0.ffn_norm.weight": "model.layers.0.post_attention_layernorm.weight",
        "model.norm_out.weight": "model.norm.weight",
        "lm_head.weight": "lm_head.weight",
    }
    assert names["model.layers.1.feed_forward.w3.weight"] == "model.layers.1.mlp.up_proj.weight"
    assert LM_HEAD not in hf_names(TIED)


@pytest.mark.parametrize("cfg", [UNTIED, TIED], ids=["untied", "tied"])
def test_ckpt_hf_ckpt_round_trip_is_bit_identical(tmp_path, cfg):
    weights = random_weights(cfg, seed=3)
    save_ckpt(weights, str(tmp_path / "a.ckpt"))
    from_ckpt = load_weights(str(tmp_path / "a.ckpt"), cfg)
    assert_same(from_ckpt, weights)
    assert list(from_ckpt) == list(expected_shapes(cfg))

    save_hf(from_ckpt, cfg, str(tmp_path / "hf"))
    from_hf = load_weights(str(tmp_path / "hf"), cfg)
    assert_same(from_hf, weights)
    save_ckpt(from_hf, str(tmp_path / "b.ckpt"))
    assert read_bytes(tmp_path / "a.ckpt") == read_bytes(tmp_path / "b.ckpt")


@pytest.mark.parametrize("cfg", [UNTIED, TIED], ids=["untied", "tied"])
def test_hf_folder_has_hf_names_and_config(tmp_path, cfg):
    weights = random_weights(cfg, seed=4)
    save_hf(weights, cfg, str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == [HF_CONFIG, HF_SINGLE]
    with safe_open(str(tmp_path / HF_SINGLE), framework="numpy") as f:
        assert f.metadata() == {"format": "pt"}
        stored = {name: f.get_tensor(name) for name in f.keys()}
    assert ("lm_head.weight" in stored) == (not cfg.tie_word_embeddings)
    assert np.array_equal(stored["model.embed_tokens.weight"], weights[EMBEDDING])
    assert np.array_equal(stored["model.norm.weight"], weights[FINAL_NORM])
    assert np.array_equal(stored["model.layers.1.mlp.down_proj.weight"],
                          weights["model.layers.1.feed_forward.w2.weight"])
    assert np.array_equal(stored["model.layers.0.post_attention_layernorm.weight"],
                          weights["model.layers.0.ffn_norm.weight"])
    assert len(stored) == len(expected_shapes(cfg))
    with open(tmp_path / HF_CONFIG) as f:
        written = json.load(f)
    assert written == config_to_hf(cfg)
    assert config_to_hf(read_hf_config(str(tmp_path))) == config_to_hf(cfg)


def test_sharded_save_and_load(tmp_path):
    weights = random_weights(UNTIED, seed=5)
    shard_bytes = 100_000
    save_hf(weights, UNTIED, str(tmp_path), shard_bytes=shard_bytes)
    with open(tmp_path / HF_INDEX) as f:
        index = json.load(f)
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2 and HF_SINGLE not in os.listdir(tmp_path)
    assert files == sorted(n for n in os.listdir(tmp_path) if n.startswith("model-"))
    assert all(name.endswith(f"-of-{len(files):05d}.safetensors") for name in files)
    assert set(index["weight_map"]) == set(hf_names(UNTIED).values())
    assert index["metadata"]["total_size"] == sum(w.nbytes for w in weights.values())
    for file in files:
        with safe_open(str(tmp_path / file), framework="numpy") as f:
            sizes = [f.get_tensor(name).nbytes for name in f.keys()]
            assert sum(sizes) <= shard_bytes or len(sizes) == 1
            assert all(index["weight_map"][name] == file for name in f.keys())
    assert_same(load_weights(str(tmp_path), UNTIED), weights)


def test_save_hf_refuses_a_folder_with_weights(tmp_path):
    weights = random_weights(TIED, seed=6)
    save_hf(weights, TIED, str(tmp_path))
    with pytest.raises(CheckpointError, match="already holds HF weights.*model.safetensors"):
        save_hf(weights, TIED, str(tmp_path), shard_bytes=10_000)


def test_save_hf_validates_the_weights(tmp_path):
    weights = random_weights(UNTIED, seed=6)
    with pytest.raises(CheckpointError, match=f"tensor '{LM_HEAD}': unexpected"):
        save_hf(weights, TIED, str(tmp_path))
    assert not os.listdir(tmp_path)


def test_ckpt_mismatch_reports_every_problem_sorted(tmp_path):
    weights = random_weights(UNTIED, seed=7)
    del weights[FINAL_NORM]
    weights[WK0] = np.zeros((64, 64), np.float32)
    weights["model.layers.2.attention.wq.weight"] = np.zeros((64, 64), np.float32)
    save_ckpt(weights, str(tmp_path / "bad.ckpt"))
    with pytest.raises(CheckpointError) as err:
        load_weights(str(tmp_path / "bad.ckpt"), UNTIED)
    lines = str(err.value).splitlines()
    assert "3 tensor(s)" in lines[0] and "bad.ckpt" in lines[0]
    assert lines[1:] == [
        f"  tensor '{WK0}': expected shape (32, 64), found (64, 64)",
        "  tensor 'model.layers.2.attention.wq.weight': unexpected for this model config "
        "(found shape (64, 64))",
        f"  tensor '{FINAL_NORM}': missing (expected shape (64,))",
    ]


def test_hf_mismatch_names_hf_tensors(tmp_path):
    tensors = hf_tensors(UNTIED)
    del tensors["lm_head.weight"]
    tensors["model.layers.1.mlp.up_proj.weight"] = np.zeros((7, 64), np.float32)
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(8, np.float32)  # ignored
    tensors["model.layers.0.self_attn.q_proj.bias"] = np.zeros(64, np.float32)
    write_hf_by_hand(tmp_path, UNTIED, tensors)
    with pytest.raises(CheckpointError) as err:
        load_weights(str(tmp_path), UNTIED)
    assert str(err.value).splitlines()[1:] == [
        "  tensor 'lm_head.weight': missing (expected shape (512, 64))",
        "  tensor 'model.layers.0.self_attn.q_proj.bias': unexpected for this model config "
        "(found shape (64,))",
        "  tensor 'model.layers.1.mlp.up_proj.weight': expected shape (192, 64), found (7, 64)",
    ]


def test_hf_inv_freq_buffers_are_ignored(tmp_path):
    tensors = hf_tensors(TIED, seed=8)
    tensors["model.layers.1.self_attn.rotary_emb.inv_freq"] = np.ones(8, np.float32)
    write_hf_by_hand(tmp_path, TIED, tensors)
    assert_same(load_weights(str(tmp_path), TIED), random_weights(TIED, seed=8))


def test_non_float_tensor_is_rejected(tmp_path):
    weights = random_weights(UNTIED, seed=9)
    weights[WQ0] = weights[WQ0].astype(np.int32)
    save_ckpt(weights, str(tmp_path / "int.ckpt"))
    with pytest.raises(CheckpointError, match=f"tensor '{WQ0}': dtype int32 is not a float type"):
        load_weights(str(tmp_path / "int.ckpt"), UNTIED)


def test_config_json_mismatch_names_the_keys(tmp_path):
    save_hf(random_weights(UNTIED), UNTIED, str(tmp_path))
    other = LlamaConfig(vocab_size=512, hidden_size=64, num_layers=3, num_heads=4, n_kv_heads=2,
                        multiple_of=32, rope_theta=500000.0, seq_length=64)
    with pytest.raises(CheckpointError) as err:
        load_weights(str(tmp_path), other)
    message = str(err.value)
    assert "config.json disagrees" in message
    assert "'num_hidden_layers' is 2 but the model config has 3" in message
    assert "'rope_theta' is 10000.0 but the model config has 500000.0" in message
    assert "max_position_embeddings" not in message  # a serving limit, not the weights' shape


def test_config_json_errors_name_the_problem(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        read_hf_config(str(tmp_path))
    hf = config_to_hf(UNTIED)
    del hf["intermediate_size"], hf["num_attention_heads"]
    (tmp_path / HF_CONFIG).write_text(json.dumps(hf))
    with pytest.raises(CheckpointError, match="required key.*intermediate_size, num_attention_heads"):
        read_hf_config(str(tmp_path))
    (tmp_path / HF_CONFIG).write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_hf_config(str(tmp_path))
    (tmp_path / HF_CONFIG).write_text(json.dumps(dict(config_to_hf(UNTIED), num_attention_heads=5)))
    with pytest.raises(CheckpointError, match="'num_heads': must divide hidden_size"):
        read_hf_config(str(tmp_path))


def test_not_a_checkpoint_at_all(tmp_path):
    junk = tmp_path / "junk.ckpt"
    junk.write_text("these are not tensors")
    with pytest.raises(CheckpointError, match="junk.ckpt: not a readable MindSpore checkpoint"):
        load_weights(str(junk), UNTIED)
    (tmp_path / "weights.bin").write_bytes(b"\0" * 16)
    with pytest.raises(CheckpointError, match="weights.bin: neither a MindSpore .ckpt file nor an HF folder"):
        load_weights(str(tmp_path / "weights.bin"), UNTIED)
    with pytest.raises(CheckpointError, match="no such file or folder"):
        load_weights(str(tmp_path / "absent.ckpt"), UNTIED)
    with pytest.raises(CheckpointError, match="no config.json"):
        load_weights(str(tmp_path), UNTIED)
    (tmp_path / HF_CONFIG).write_text(json.dumps(config_to_hf(UNTIED)))
    with pytest.raises(CheckpointError, match="holds neither model.safetensors nor"):
        load_weights(str(tmp_path), UNTIED)
    (tmp_path / HF_SINGLE).write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match="model.safetensors: not a safetensors file"):
        load_weights(str(tmp_path), UNTIED)
    (tmp_path / HF_INDEX).write_text(json.dumps({"weight_map": {"x": "model-00001-of-00002.safetensors"}}))
    with pytest.raises(CheckpointError, match="lists shard model-00001-of-00002.safetensors, which does not"):
        load_weights(str(tmp_path), UNTIED)


def test_save_ckpt_requires_the_suffix(tmp_path):
    with pytest.raises(CheckpointError, match="must end in .ckpt"):
        save_ckpt(random_weights(TIED), str(tmp_path / "weights"))
    assert not os.listdir(tmp_path)


def test_half_precision_sources_are_cast(tmp_path):
    """fp16 and bf16 tensors written by MindSpore itself (ckpt and safetensors) load as float32."""
    weights = random_weights(TIED, seed=10)
    bf16 = {k: mindspore.Tensor(w).astype(mindspore.bfloat16) for k, w in weights.items()}
    expected_bf16 = {k: t.astype(mindspore.float32).asnumpy() for k, t in bf16.items()}

    mindspore.save_checkpoint([{"name": k, "data": t} for k, t in bf16.items()], str(tmp_path / "bf.ckpt"))
    assert_same(load_weights(str(tmp_path / "bf.ckpt"), TIED), expected_bf16)

    names = hf_names(TIED)
    os.makedirs(tmp_path / "hf")
    mindspore.save_checkpoint([{"name": names[k], "data": t} for k, t in bf16.items()],
                              str(tmp_path / "hf" / HF_SINGLE), format="safetensors")
    (tmp_path / "hf" / HF_CONFIG).write_text(json.dumps(config_to_hf(TIED)))
    assert_same(load_weights(str(tmp_path / "hf"), TIED), expected_bf16)

    fp16 = {k: w.astype(np.float16) for k, w in weights.items()}
    save_ckpt(fp16, str(tmp_path / "h.ckpt"))
    assert_same(load_weights(str(tmp_path / "h.ckpt"), TIED), {k: w.astype(np.float32) for k, w in fp16.items()})
    assert_same(load_weights(str(tmp_path / "h.ckpt"), TIED, dtype=np.float16), fp16)
    save_hf(fp16, TIED, str(tmp_path / "hf16"))
    assert json.loads((tmp_path / "hf16" / HF_CONFIG).read_text())["torch_dtype"] == "float16"
    assert_same(load_weights(str(tmp_path / "hf16"), TIED, dtype=np.float16), fp16)


def test_logits_match_between_formats(tmp_path):
    reference = pytest.importorskip("msllama.reference")
    weights = random_weights(UNTIED, seed=11)
    save_ckpt(weights, str(tmp_path / "m.ckpt"))
    save_hf(weights, UNTIED, str(tmp_path / "hf"))
    tokens = [1, 17, 300, 42, 511, 8]
    from_ckpt = reference.ReferenceModel(UNTIED, load_weights(str(tmp_path / "m.ckpt"), UNTIED)).forward(tokens)
    from_hf = reference.ReferenceModel(UNTIED, load_weights(str(tmp_path / "hf"), UNTIED)).forward(tokens)
    assert from_ckpt.shape == (len(tokens), UNTIED.vocab_size)
    assert np.array_equal(from_ckpt, from_hf)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "msllama.convert", *args],
                          capture_output=True, text=True, timeout=120)


def test_cli_round_trip(tmp_path):
    (tmp_path / "predict.yaml").write_text(YAML)
    save_ckpt(random_weights(UNTIED, seed=12), str(tmp_path / "a.ckpt"))
    to_hf = run_cli("--src", str(tmp_path / "a.ckpt"), "--dst", str(tmp_path / "hf"), "--to", "hf",
                    "--config", str(tmp_path / "predict.yaml"), "--shard-bytes", "200000")
    assert to_hf.returncode == 0, to_hf.stderr
    n = UNTIED.num_params()
    assert to_hf.stdout.strip() == (f"wrote {tmp_path / 'hf'} (hf): {len(expected_shapes(UNTIED))} tensors, "
                                    f"{n:,} parameters, {4 * n:,} bytes of float32")
    assert (tmp_path / "hf" / HF_INDEX).exists()
    back = run_cli("--src", str(tmp_path / "hf"), "--dst", str(tmp_path / "b.ckpt"), "--to", "ckpt")
    assert back.returncode == 0, back.stderr
    assert read_bytes(tmp_path / "a.ckpt") == read_bytes(tmp_path / "b.ckpt")


def test_cli_errors_exit_2(tmp_path, capsys):
    save_ckpt(random_weights(UNTIED), str(tmp_path / "a.ckpt"))
    failed = run_cli("--src", str(tmp_path / "a.ckpt"), "--dst", str(tmp_path / "hf"), "--to", "hf")
    assert failed.returncode == 2
    assert "--config is required" in failed.stderr and failed.stdout == ""

    save_hf(random_weights(TIED), TIED, str(tmp_path / "tied"))
    (tmp_path / "predict.yaml").write_text(YAML)
    code = convert_main(["--src", str(tmp_path / "tied"), "--dst", str(tmp_path / "x.ckpt"), "--to", "ckpt",
                         "--config", str(tmp_path / "predict.yaml")])
    assert code == 2
    assert "'tie_word_embeddings' is True but the model config has False" in capsys.readouterr().err
    assert not (tmp_path / "x.ckpt").exists()
