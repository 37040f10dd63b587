"""GGUF export: read back with the `gguf` package's reader, and (when built) served by llama-server."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import yaml

gguf = pytest.importorskip("gguf")
spm = pytest.importorskip("sentencepiece")

from msllama.config import LlamaConfig  # noqa: E402
from msllama.export_gguf import export_gguf, main, rotate_half_to_interleaved  # noqa: E402
from msllama.weights import EMBEDDING, LM_HEAD, layer_names, random_weights  # noqa: E402

PEERS = os.path.join(os.path.dirname(__file__), "..", "..", "experiments", "peers")
TOKENIZER_PIECES = 400
CFG = LlamaConfig(vocab_size=416, hidden_size=64, num_layers=2, num_heads=4, n_kv_heads=2,
                  intermediate_size=96, seq_length=256, rms_norm_eps=1e-6, rope_theta=5000.0)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A small BPE sentencepiece model with Llama's special ids (unk 0, bos 1, eos 2) and byte pieces."""
    folder = tmp_path_factory.mktemp("tok")
    rng = np.random.default_rng(0)
    syllables = ["ka", "lo", "mi", "ten", "ras", "bu", "qe", "dor", "fi", "zu", "nal", "ost"]
    lines = [" ".join("".join(rng.choice(syllables, rng.integers(1, 4))) for _ in range(12))
             for _ in range(3000)]
    text = folder / "text.txt"
    text.write_text("\n".join(lines), encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(folder / "tok"), model_type="bpe",
                                   vocab_size=TOKENIZER_PIECES, byte_fallback=True, minloglevel=2,
                                   unk_id=0, bos_id=1, eos_id=2, pad_id=-1)
    return str(folder / "tok.model")


@pytest.fixture(scope="module")
def weights() -> dict[str, np.ndarray]:
    return random_weights(CFG, seed=3)


@pytest.fixture(scope="module")
def reader(tokenizer: str, weights: dict[str, np.ndarray], tmp_path_factory: pytest.TempPathFactory):
    out = str(tmp_path_factory.mktemp("gguf") / "model.gguf")
    export_gguf(CFG, weights, tokenizer, out)
    return gguf.GGUFReader(out)


def field(reader, key: str):
    return reader.fields[key].contents()


def test_llama_metadata(reader) -> None:
    expected = {
        "general.architecture": "llama", "general.file_type": int(gguf.LlamaFileType.ALL_F32),
        "llama.context_length": 256, "llama.embedding_length": 64, "llama.block_count": 2,
        "llama.feed_forward_length": 96, "llama.rope.dimension_count": 16,
        "llama.attention.head_count": 4, "llama.attention.head_count_kv": 2,
        "llama.rope.freq_base": 5000.0, "llama.vocab_size": 416,
        "tokenizer.ggml.model": "llama", "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.add_bos_token": True,
    }
    assert {k: field(reader, k) for k in expected} == expected
    assert field(reader, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-6)
    assert "tokenizer.ggml.padding_token_id" not in reader.fields  # the tokenizer has no pad piece


def test_vocabulary_is_the_sentencepiece_model_padded_to_vocab_size(reader, tokenizer: str) -> None:
    sp = spm.SentencePieceProcessor(model_file=tokenizer)
    tokens = field(reader, "tokenizer.ggml.tokens")
    scores = field(reader, "tokenizer.ggml.scores")
    types = field(reader, "tokenizer.ggml.token_type")
    assert len(tokens) == len(scores) == len(types) == CFG.vocab_size
    n = sp.get_piece_size()
    assert tokens[:n] == [sp.id_to_piece(i) for i in range(n)]
    np.testing.assert_allclose(scores[:n], [sp.get_score(i) for i in range(n)], rtol=1e-6)
    assert tokens[n:] == [f"[PAD{i}]" for i in range(n, CFG.vocab_size)]
    assert types[0] == gguf.TokenType.UNKNOWN and types[1] == types[2] == gguf.TokenType.CONTROL
    assert tokens[3] == "<0x00>" and types[3] == gguf.TokenType.BYTE
    assert types[n - 1] == gguf.TokenType.NORMAL
    assert set(types[n:]) == {gguf.TokenType.UNUSED}


def rope_rows_expected(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Row h*D + 2j + t of the result is row h*D + t*D/2 + j of w, written out index by index."""
    d = w.shape[0] // n_heads
    out = np.empty_like(w)
    for h in range(n_heads):
        for j in range(d // 2):
            for t in range(2):
                out[h * d + 2 * j + t] = w[h * d + t * d // 2 + j]
    return out


def test_tensors_have_llama_cpp_names_and_values(reader, weights: dict[str, np.ndarray]) -> None:
    got = {t.name: np.asarray(t.data) for t in reader.tensors}
    assert all(t.tensor_type == gguf.GGMLQuantizationType.F32 for t in reader.tensors)
    expected = {"token_embd.weight": weights[EMBEDDING], "output.weight": weights[LM_HEAD],
                "output_norm.weight": weights["model.norm_out.weight"]}
    for i in range(CFG.num_layers):
        n = layer_names(i)
        expected.update({
            f"blk.{i}.attn_q.weight": rope_rows_expected(weights[n["wq"]], CFG.num_heads),
            f"blk.{i}.attn_k.weight": rope_rows_expected(weights[n["wk"]], CFG.kv_heads),
            f"blk.{i}.attn_v.weight": weights[n["wv"]], f"blk.{i}.attn_output.weight": weights[n["wo"]],
            f"blk.{i}.ffn_gate.weight": weights[n["w1"]], f"blk.{i}.ffn_down.weight": weights[n["w2"]],
            f"blk.{i}.ffn_up.weight": weights[n["w3"]],
            f"blk.{i}.attn_norm.weight": weights[n["attention_norm"]],
            f"blk.{i}.ffn_norm.weight": weights[n["ffn_norm"]],
        })
    assert sorted(got) == sorted(expected)
    for name, array in expected.items():
        np.testing.assert_array_equal(got[name], array, err_msg=name)
    assert not np.array_equal(got["blk.0.attn_q.weight"], weights[layer_names(0)["wq"]])


def test_reordered_rows_turn_rotate_half_rope_into_interleaved_rope() -> None:
    """What llama.cpp computes with the exported rows equals what HF/mindformers compute, reordered."""
    rng = np.random.default_rng(0)
    heads, d, pos = 3, 8, 7.0
    w = rng.standard_normal((heads * d, 5))
    x = rng.standard_normal(5)
    angles = pos * 10000.0 ** (-np.arange(0, d, 2) / d)
    cos, sin = np.cos(angles), np.sin(angles)

    q = (w @ x).reshape(heads, d)  # rotate-half: pairs (j, j + d/2)
    a, b = q[:, : d // 2], q[:, d // 2:]
    rotated_half = np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=1)

    p = (rotate_half_to_interleaved(w, heads) @ x).reshape(heads, d)  # interleaved: pairs (2j, 2j+1)
    even, odd = p[:, 0::2], p[:, 1::2]
    rotated_inter = np.stack([even * cos - odd * sin, odd * cos + even * sin], axis=-1).reshape(heads, d)

    np.testing.assert_allclose(rotated_inter, rope_rows_expected(rotated_half.reshape(-1, 1), heads)
                               .reshape(heads, d), atol=1e-12)


def test_tied_embeddings_omit_the_output_tensor(tokenizer: str, tmp_path) -> None:
    cfg = LlamaConfig(**{**CFG.__dict__, "tie_word_embeddings": True})
    out = str(tmp_path / "tied.gguf")
    export_gguf(cfg, random_weights(cfg, seed=1), tokenizer, out)
    names = {t.name for t in gguf.GGUFReader(out).tensors}
    assert "token_embd.weight" in names and "output.weight" not in names


def test_bad_inputs_name_the_problem(tokenizer: str, weights: dict[str, np.ndarray], tmp_path) -> None:
    out = str(tmp_path / "bad.gguf")
    small = LlamaConfig(**{**CFG.__dict__, "vocab_size": 300})
    with pytest.raises(ValueError, match="400 pieces, more than the model's vocab_size 300"):
        export_gguf(small, random_weights(small, seed=0), tokenizer, out)
    missing = {k: v for k, v in weights.items() if k != LM_HEAD}
    with pytest.raises(KeyError, match="lm_head.weight"):
        export_gguf(CFG, missing, tokenizer, out)
    wrong = {**weights, LM_HEAD: weights[LM_HEAD][:-1]}
    with pytest.raises(ValueError, match=r"'lm_head.weight' has shape \(415, 64\), expected \(416, 64\)"):
        export_gguf(CFG, wrong, tokenizer, out)
    with pytest.raises(ValueError, match="'bos_token_id': 5 differs from the tokenizer's 1"):
        export_gguf(LlamaConfig(**{**CFG.__dict__, "bos_token_id": 5}), weights, tokenizer, out)
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        export_gguf(CFG, weights, str(tmp_path / "none.model"), out)
    assert not os.path.exists(out)


def test_cli_exports_hf_folders_and_ckpt_files(tokenizer: str, weights, tmp_path, capsys) -> None:
    from msllama.checkpoint import save_ckpt, save_hf

    direct = tmp_path / "direct.gguf"
    export_gguf(CFG, weights, tokenizer, str(direct))

    hf = tmp_path / "hf"
    save_hf(weights, CFG, str(hf))
    assert main(["--src", str(hf), "--tokenizer", tokenizer, "--out", str(tmp_path / "hf.gguf")]) == 0
    assert (tmp_path / "hf.gguf").read_bytes() == direct.read_bytes()

    ckpt = str(tmp_path / "model.ckpt")
    save_ckpt(weights, ckpt)
    assert main(["--src", ckpt, "--out", str(tmp_path / "no.gguf")]) == 2
    assert "--config is required" in capsys.readouterr().err
    arch = {"vocab_size": CFG.vocab_size, "hidden_size": CFG.hidden_size, "num_layers": CFG.num_layers,
            "num_heads": CFG.num_heads, "n_kv_heads": CFG.n_kv_heads, "intermediate_size": CFG.ffn_hidden,
            "seq_length": CFG.seq_length, "rms_norm_eps": CFG.rms_norm_eps, "rope_theta": CFG.rope_theta}
    predict = tmp_path / "predict.yaml"
    predict.write_text(yaml.safe_dump({"model": {"model_config": arch}}), encoding="utf-8")
    assert main(["--src", ckpt, "--config", str(predict), "--out", str(tmp_path / "no.gguf")]) == 2
    assert "--tokenizer: required" in capsys.readouterr().err
    # the tokenizer defaults to the one the predict YAML names
    predict.write_text(yaml.safe_dump({"model": {"model_config": arch},
                                       "processor": {"tokenizer": {"vocab_file": tokenizer}}}), encoding="utf-8")
    assert main(["--src", ckpt, "--config", str(predict), "--out", str(tmp_path / "ckpt.gguf")]) == 0
    assert (tmp_path / "ckpt.gguf").read_bytes() == direct.read_bytes()
    assert not (tmp_path / "no.gguf").exists()


@pytest.fixture(scope="module")
def peers():
    sys.path.insert(0, PEERS)
    import llamacpp
    import verify_llamacpp
    if not os.access(llamacpp.server_binary(), os.X_OK):
        pytest.skip("llama-server not built (experiments/peers/build_llamacpp.sh)")
    return llamacpp, verify_llamacpp


def test_llama_server_matches_the_float64_reference(peers, tokenizer: str, weights, tmp_path) -> None:
    llamacpp, verify = peers
    from msllama.reference import ReferenceModel

    model = str(tmp_path / "model.gguf")
    export_gguf(CFG, weights, tokenizer, model)
    ref = ReferenceModel(CFG, weights)
    prompts = verify.random_prompts(CFG, count=2, length=12, seed=1)
    never_sample = llamacpp.byte_tokens(model)
    assert len(never_sample) == 256
    with llamacpp.LlamaServer(model, log_path=str(tmp_path / "server.log")) as server:
        results = [verify.compare(ref, server, p, 24, never_sample) for p in prompts]
    for r in results:
        assert r.steps == 24
        assert r.max_abs_logprob_diff < 1e-4
        assert r.argmax_agreement == 1.0 and r.first_divergence is None
