"""Convert Llama-2 weights between a mindformers `.ckpt` file and an HF safetensors folder.

    python -m msllama.convert --src PATH --dst PATH --to ckpt|hf [--config predict.yaml]

A `.ckpt` file holds tensors only, so its architecture comes from a mindformers predict YAML
(--config). An HF folder carries its own config.json; with --config as well, the two must agree.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass

import numpy as np

from .checkpoint import DEFAULT_SHARD_BYTES, CheckpointError, load_weights, read_hf_config, save_ckpt, save_hf
from .config import LlamaConfig, load_predict_config

DTYPES = {"float32": np.float32, "float16": np.float16}


@dataclass(frozen=True)
class Conversion:
    dst: str
    to: str
    tensors: int
    parameters: int
    bytes: int
    dtype: str

    def __str__(self) -> str:
        return (f"wrote {self.dst} ({self.to}): {self.tensors} tensors, {self.parameters:,} parameters, "
                f"{self.bytes:,} bytes of {self.dtype}")


def source_config(src: str, config_path: str | None) -> LlamaConfig:
    """The architecture of `src`: from the YAML if given (load_weights checks it against an HF
    folder's config.json), else from config.json."""
    if config_path:
        return load_predict_config(config_path).model
    if os.path.isdir(src):
        return read_hf_config(src)
    raise CheckpointError(f"--config is required for {src}: a .ckpt file stores tensors, not the "
                          f"architecture (give the mindformers predict YAML it belongs to)")


def convert(src: str, dst: str, to: str, config_path: str | None = None, dtype: str = "float32",
            shard_bytes: int = DEFAULT_SHARD_BYTES) -> Conversion:
    if to not in ("ckpt", "hf"):
        raise CheckpointError(f"--to: must be ckpt or hf, got {to!r}")
    if dtype not in DTYPES:
        raise CheckpointError(f"--dtype: must be one of {sorted(DTYPES)}, got {dtype!r}")
    cfg = source_config(src, config_path)
    weights = load_weights(src, cfg, DTYPES[dtype])
    if to == "ckpt":
        save_ckpt(weights, dst)
    else:
        save_hf(weights, cfg, dst, shard_bytes)
    return Conversion(dst, to, len(weights), sum(w.size for w in weights.values()),
                      sum(w.nbytes for w in weights.values()), dtype)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m msllama.convert", description=__doc__.split("\n")[0])
    parser.add_argument("--src", required=True, help="a mindformers .ckpt file or an HF folder")
    parser.add_argument("--dst", required=True, help="the .ckpt file or (empty) HF folder to write")
    parser.add_argument("--to", required=True, choices=("ckpt", "hf"))
    parser.add_argument("--config", help="mindformers predict YAML with the architecture")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES),
                        help="dtype of the written tensors (default float32)")
    parser.add_argument("--shard-bytes", type=int, default=DEFAULT_SHARD_BYTES,
                        help="largest HF shard before the weights are split (default 5e9)")
    args = parser.parse_args(argv)
    try:
        result = convert(args.src, args.dst, args.to, args.config, args.dtype, args.shard_bytes)
    except (ValueError, OSError) as e:  # CheckpointError and ConfigError are ValueErrors
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
