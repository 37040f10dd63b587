"""Build every debug asset once into `.cache/debug/` (idempotent; seconds when up to date).

    python -m msllama.assets [--out DIR] [--bench]

Writes the tokenizer and alpaca stand-ins (`msllama.debug_data`) and the tiny random Llama-2 of
`mindformers/configs/llama2/predict_llama2_7b_debug.yaml` as a mindformers `.ckpt`. `--bench`
also builds the ~58 M-parameter benchmark model of `predict_llama2_bench.yaml` (.cache/bench/).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import time

from . import debug_data
from .config import LlamaConfig, load_predict_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEBUG_DIR = os.path.join(ROOT, ".cache", "debug")
DEBUG_PREDICT_YAML = os.path.join(ROOT, "mindformers", "configs", "llama2", "predict_llama2_7b_debug.yaml")
BENCH_PREDICT_YAML = os.path.join(ROOT, "mindformers", "configs", "llama2", "predict_llama2_bench.yaml")
WEIGHTS_FILE = "llama2_debug.ckpt"
WEIGHTS_SEED = 0


def _weights_key(cfg: LlamaConfig) -> str:
    with open(os.path.join(os.path.dirname(__file__), "weights.py"), "rb") as f:
        source = hashlib.sha256(f.read()).hexdigest()[:16]
    return json.dumps({"config": repr(cfg), "weights.py": source, "seed": WEIGHTS_SEED}, sort_keys=True)


def build_weights(path: str, cfg: LlamaConfig) -> str:
    """Random weights for `cfg` at `path` (a .ckpt), unless they are there already."""
    from .checkpoint import save_ckpt
    from .weights import random_weights

    os.makedirs(os.path.dirname(path), exist_ok=True)
    key_path = path + ".key"
    key = _weights_key(cfg)
    if os.path.isfile(path) and os.path.isfile(key_path) and open(key_path).read() == key:
        return path
    save_ckpt(random_weights(cfg, seed=WEIGHTS_SEED), path)
    with open(key_path, "w") as f:
        f.write(key)
    return path


def build(out_dir: str = DEBUG_DIR, bench: bool = False) -> dict[str, str]:
    paths = debug_data.build_all(out_dir)
    paths[WEIGHTS_FILE] = build_weights(os.path.join(out_dir, WEIGHTS_FILE), load_predict_config(DEBUG_PREDICT_YAML).model)
    if bench:
        pc = load_predict_config(BENCH_PREDICT_YAML)
        paths[os.path.basename(pc.runtime.checkpoint)] = build_weights(pc.runtime.checkpoint, pc.model)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description="build the debug assets (tokenizer, datasets, model)")
    parser.add_argument("--out", default=DEBUG_DIR)
    parser.add_argument("--bench", action="store_true", help="also the ~58 M-parameter benchmark model")
    args = parser.parse_args()
    start = time.time()
    print(f"debug assets in {args.out} ...", flush=True)
    for name, path in build(args.out, args.bench).items():
        print(f"  {name:22s} {os.path.getsize(path) / 1e6:8.1f} MB")
    print(f"ready in {time.time() - start:.1f} s")


if __name__ == "__main__":
    main()
