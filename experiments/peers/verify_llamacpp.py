"""Check that llama-server, fed our GGUF export, computes the same model as our float64 reference.

    .venv/bin/python experiments/peers/verify_llamacpp.py --tokenizer tokenizer.model [--shape tiny|42m]

Exports a seeded random model, serves it under several llama.cpp settings, runs greedy
completions of seeded random prompts and compares every step against `msllama.reference`
teacher-forced on llama.cpp's own tokens (so rows stay comparable after a divergence). Writes
a JSON summary to build/verify/<shape>.json and prints one line per setting.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from llamacpp import EXACT_FLAGS, LlamaServer, byte_tokens  # noqa: E402

from msllama.config import LlamaConfig  # noqa: E402
from msllama.export_gguf import export_gguf  # noqa: E402
from msllama.reference import ReferenceModel  # noqa: E402
from msllama.weights import random_weights  # noqa: E402

SHAPES = {
    "tiny": LlamaConfig(hidden_size=256, num_layers=2, num_heads=8, n_kv_heads=4, intermediate_size=704,
                        vocab_size=32000, seq_length=2048),
    # llama2.c's "42M" shape with an untied head, the model of the FINDINGS.md peer benchmark
    "42m": LlamaConfig(hidden_size=512, num_layers=8, num_heads=8, intermediate_size=1376,
                       vocab_size=32000, seq_length=2048),
}
SETTINGS = {
    "exact (-fa off, f32 KV)": EXACT_FLAGS,
    "defaults (-fa auto, f16 KV)": (),
    "-fa off, f16 KV": ("-fa", "off"),
    "-fa on, f32 KV": ("-fa", "on", "-ctk", "f32", "-ctv", "f32"),
}


@dataclass
class Agreement:
    steps: int
    max_abs_logprob_diff: float     # over the whole vocabulary, every step
    argmax_agreement: float         # share of steps where llama.cpp's token is the reference's argmax
    first_divergence: int | None    # first step where free-running greedy sequences differ


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def compare(ref: ReferenceModel, server: LlamaServer, prompt: list[int], max_tokens: int,
            never_sample: list[int]) -> Agreement:
    """llama.cpp's greedy run of `prompt` against the reference, both teacher-forced on its tokens."""
    tokens = server.greedy(prompt, max_tokens)
    vocab = ref.cfg.vocab_size
    got = server.teacher_forced_logprobs(prompt, tokens, vocab, never_sample)
    finite = np.isfinite(got)
    if not finite.all():  # float32 probabilities can underflow to 0 for hopeless tokens
        raise ValueError(f"llama.cpp returned {int((~finite).sum())} non-finite log-probabilities")
    teacher = log_softmax(ref.forward(prompt + tokens[:-1])[len(prompt) - 1:])
    free, _ = ref.greedy(prompt, len(tokens))
    diverged = [i for i, (a, b) in enumerate(zip(free, tokens)) if a != b]
    return Agreement(
        steps=len(tokens),
        max_abs_logprob_diff=float(np.abs(teacher - got).max()),
        argmax_agreement=float(np.mean(teacher.argmax(axis=-1) == np.asarray(tokens))),
        first_divergence=diverged[0] if diverged else None,
    )


def random_prompts(cfg: LlamaConfig, count: int, length: int, seed: int) -> list[list[int]]:
    """BOS then ids above the special tokens, as a tokenized prompt would look."""
    rng = np.random.default_rng(seed)
    return [[cfg.bos_token_id] + rng.integers(3, cfg.vocab_size, length - 1).tolist() for _ in range(count)]


def verify(cfg: LlamaConfig, tokenizer: str, workdir: str, name: str, prompts: int, prompt_len: int,
           max_tokens: int, seed: int) -> dict[str, dict]:
    os.makedirs(workdir, exist_ok=True)
    weights = random_weights(cfg, seed=seed)
    gguf_path = os.path.join(workdir, f"{name}.gguf")
    export_gguf(cfg, weights, tokenizer, gguf_path)
    ref = ReferenceModel(cfg, weights)
    never_sample = byte_tokens(gguf_path)
    results: dict[str, dict] = {}
    for label, flags in SETTINGS.items():
        with LlamaServer(gguf_path, flags=flags, log_path=os.path.join(workdir, f"{name}.server.log")) as srv:
            per_prompt = [compare(ref, srv, p, max_tokens, never_sample)
                          for p in random_prompts(cfg, prompts, prompt_len, seed)]
        divergences = [a.first_divergence for a in per_prompt if a.first_divergence is not None]
        results[label] = {
            "flags": list(flags),
            "max_abs_logprob_diff": max(a.max_abs_logprob_diff for a in per_prompt),
            "argmax_agreement": float(np.mean([a.argmax_agreement for a in per_prompt])),
            "prompts_diverged": len(divergences),
            "earliest_divergence": min(divergences) if divergences else None,
            "per_prompt": [asdict(a) for a in per_prompt],
        }
        r = results[label]
        print(f"{label:30s} max|dlogprob| {r['max_abs_logprob_diff']:.2e}  argmax agreement "
              f"{r['argmax_agreement']:.4f}  greedy diverged in {r['prompts_diverged']}/{prompts} prompts"
              + (f" (earliest at step {r['earliest_divergence']})" if divergences else ""), flush=True)
    return results


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokenizer", required=True, help="sentencepiece tokenizer.model with 32000 pieces")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--prompt-len", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=os.path.join(here, "build", "verify"))
    args = parser.parse_args()
    cfg = SHAPES[args.shape]
    results = verify(cfg, args.tokenizer, args.workdir, args.shape, args.prompts, args.prompt_len,
                     args.max_tokens, args.seed)
    out = os.path.join(args.workdir, f"{args.shape}.json")
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"config": asdict(cfg), "args": vars(args), "results": results}, f, indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
