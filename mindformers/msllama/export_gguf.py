"""Export a Llama-2 model to GGUF (f32) so llama.cpp can serve the same weights as a benchmark peer.

    python -m msllama.export_gguf --src <HF folder | model.ckpt> [--config predict.yaml] \
        [--tokenizer tokenizer.model] --out model.gguf

Needs the optional `gguf` package (requirements-bench.txt). Tensors get llama.cpp's names; the
wq/wk rows are reordered from the rotate-half rotary layout of HF and mindformers checkpoints to
the interleaved-pair layout llama.cpp's rope kernel expects (the reordering llama.cpp's own HF
converter applies). Without it llama.cpp computes a different model.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass

import numpy as np

from .config import LlamaConfig, load_predict_config
from .weights import EMBEDDING, FINAL_NORM, LM_HEAD, expected_shapes, layer_names


def rotate_half_to_interleaved(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Reorder the output rows of a q or k projection, per head, from rotate-half to interleaved.

    Rotate-half pairs dimension j with j + head_dim/2; interleaved pairs 2j with 2j + 1. Row
    j (first half) moves to 2j, row j + head_dim/2 to 2j + 1.
    """
    rows = w.shape[0]
    if rows % (2 * n_heads):
        raise ValueError(f"projection with {rows} rows cannot split into {n_heads} heads of even size")
    half = rows // n_heads // 2
    return w.reshape(n_heads, 2, half, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@dataclass(frozen=True)
class Vocab:
    tokens: list[bytes]
    scores: list[float]
    types: list[int]
    bos_id: int
    eos_id: int
    unk_id: int
    pad_id: int  # -1: the tokenizer has none


def read_sentencepiece(path: str, vocab_size: int) -> Vocab:
    """The tokenizer's pieces, padded with unused `[PAD<id>]` entries up to the model's vocab size."""
    import sentencepiece as spm
    from gguf import TokenType

    if not os.path.isfile(path):
        raise FileNotFoundError(f"tokenizer: no such file {path!r}")
    sp = spm.SentencePieceProcessor(model_file=path)
    n = sp.get_piece_size()
    if n > vocab_size:
        raise ValueError(f"tokenizer: {path!r} has {n} pieces, more than the model's vocab_size {vocab_size}")
    tokens, scores, types = [], [], []
    for i in range(n):
        tokens.append(sp.id_to_piece(i).encode("utf-8"))
        scores.append(float(sp.get_score(i)))
        if sp.is_unknown(i):
            types.append(TokenType.UNKNOWN)
        elif sp.is_control(i):
            types.append(TokenType.CONTROL)
        elif sp.is_unused(i):
            types.append(TokenType.UNUSED)
        elif sp.is_byte(i):
            types.append(TokenType.BYTE)
        else:
            types.append(TokenType.NORMAL)
    for i in range(n, vocab_size):
        tokens.append(f"[PAD{i}]".encode("utf-8"))
        scores.append(-1000.0)
        types.append(TokenType.UNUSED)
    return Vocab(tokens, scores, [int(t) for t in types], sp.bos_id(), sp.eos_id(), sp.unk_id(), sp.pad_id())


def gguf_tensors(cfg: LlamaConfig, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """llama.cpp tensor name -> f32 array ([out, in] for matrices), q/k rows reordered."""
    from gguf import MODEL_TENSOR, TENSOR_NAMES

    shapes = expected_shapes(cfg)
    for name, shape in shapes.items():
        if name not in weights:
            raise KeyError(f"weights: missing tensor '{name}'")
        if tuple(weights[name].shape) != shape:
            raise ValueError(f"weights: tensor '{name}' has shape {tuple(weights[name].shape)}, expected {shape}")

    def f32(name: str) -> np.ndarray:
        return np.ascontiguousarray(weights[name], dtype=np.float32)

    def gname(tensor: MODEL_TENSOR, layer: int | None = None) -> str:
        base = TENSOR_NAMES[tensor]
        return (base if layer is None else base.format(bid=layer)) + ".weight"

    out = {gname(MODEL_TENSOR.TOKEN_EMBD): f32(EMBEDDING)}
    per_layer = {"attention_norm": MODEL_TENSOR.ATTN_NORM, "wq": MODEL_TENSOR.ATTN_Q,
                 "wk": MODEL_TENSOR.ATTN_K, "wv": MODEL_TENSOR.ATTN_V, "wo": MODEL_TENSOR.ATTN_OUT,
                 "ffn_norm": MODEL_TENSOR.FFN_NORM, "w1": MODEL_TENSOR.FFN_GATE,
                 "w2": MODEL_TENSOR.FFN_DOWN, "w3": MODEL_TENSOR.FFN_UP}
    for i in range(cfg.num_layers):
        names = layer_names(i)
        for key, tensor in per_layer.items():
            w = f32(names[key])
            if key == "wq":
                w = rotate_half_to_interleaved(w, cfg.num_heads)
            elif key == "wk":
                w = rotate_half_to_interleaved(w, cfg.kv_heads)
            out[gname(tensor, i)] = w
    out[gname(MODEL_TENSOR.OUTPUT_NORM)] = f32(FINAL_NORM)
    if not cfg.tie_word_embeddings:  # llama.cpp falls back to token_embd when output is absent
        out[gname(MODEL_TENSOR.OUTPUT)] = f32(LM_HEAD)
    return out


def export_gguf(cfg: LlamaConfig, weights: dict[str, np.ndarray], tokenizer_path: str, out_path: str,
                name: str = "msllama") -> None:
    """Write `weights` (mindformers names) and the sentencepiece tokenizer as an f32 GGUF file."""
    import gguf

    vocab = read_sentencepiece(tokenizer_path, cfg.vocab_size)
    for field, model_id, tok_id in (("bos_token_id", cfg.bos_token_id, vocab.bos_id),
                                    ("eos_token_id", cfg.eos_token_id, vocab.eos_id)):
        if model_id != tok_id:
            raise ValueError(f"config key '{field}': {model_id} differs from the tokenizer's {tok_id}")
    tensors = gguf_tensors(cfg, weights)

    writer = gguf.GGUFWriter(out_path, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    writer.add_name(name)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_context_length(cfg.seq_length)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_layers)
    writer.add_feed_forward_length(cfg.ffn_hidden)
    writer.add_rope_dimension_count(cfg.head_dim)
    writer.add_head_count(cfg.num_heads)
    writer.add_head_count_kv(cfg.kv_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(cfg.rope_theta)

    writer.add_tokenizer_model("llama")  # llama.cpp's name for a sentencepiece (SPM) vocabulary
    writer.add_tokenizer_pre("default")
    writer.add_token_list(vocab.tokens)
    writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
    writer.add_bos_token_id(vocab.bos_id)
    writer.add_eos_token_id(vocab.eos_id)
    writer.add_unk_token_id(vocab.unk_id)
    if vocab.pad_id >= 0:
        writer.add_pad_token_id(vocab.pad_id)
    writer.add_add_bos_token(True)  # Llama-2 prompts start with BOS, as in the contest kit
    writer.add_add_eos_token(False)

    for tensor_name, array in tensors.items():
        writer.add_tensor(tensor_name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m msllama.export_gguf", description=__doc__.split("\n")[0])
    parser.add_argument("--src", required=True, help="HF folder (config.json + safetensors) or mindformers .ckpt")
    parser.add_argument("--config", help="mindformers predict YAML with the architecture (required for a .ckpt)")
    parser.add_argument("--tokenizer", help="sentencepiece tokenizer.model (default: the config's "
                                            "vocab_file, else tokenizer.model in the --src folder)")
    parser.add_argument("--out", required=True, help="GGUF file to write")
    args = parser.parse_args(argv)

    # imported here: checkpoint loading needs MindSpore, `export_gguf` itself only numpy and gguf
    from .checkpoint import load_weights
    from .convert import source_config

    try:
        cfg = source_config(args.src, args.config)
        tokenizer = args.tokenizer or (load_predict_config(args.config).runtime.tokenizer if args.config else "")
        if not tokenizer and os.path.isdir(args.src):
            tokenizer = os.path.join(args.src, "tokenizer.model")
        if not tokenizer:
            raise ValueError("--tokenizer: required (the config names no processor.tokenizer.vocab_file)")
        export_gguf(cfg, load_weights(args.src, cfg), tokenizer, args.out)
    except (ValueError, KeyError, OSError) as e:  # ConfigError and CheckpointError are ValueErrors
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
