"""Loading and saving Llama-2 weights: mindformers `.ckpt` files and HF safetensors folders.

Weights come back as `dict[str, np.ndarray]` in mindformers names (see weights.py), in the order
of `expected_shapes(cfg)`. HF names map one to one onto them: both formats use the rotate-half
rotary layout and `[out, in]` Dense weights, so no tensor is permuted or transposed.
"""
from __future__ import annotations

import glob
import json
import math
import os
import struct
from dataclasses import dataclass
from functools import partial
from typing import Callable

import mindspore
import numpy as np
from safetensors.numpy import save_file

from .config import ConfigError, LlamaConfig, config_from_hf, config_to_hf
from .weights import EMBEDDING, FINAL_NORM, LM_HEAD, expected_shapes, layer_names

HF_CONFIG = "config.json"
HF_SINGLE = "model.safetensors"
HF_INDEX = "model.safetensors.index.json"
DEFAULT_SHARD_BYTES = 5 * 10**9  # HF's default max_shard_size ("5GB")

_HF_GLOBAL = {EMBEDDING: "model.embed_tokens.weight", FINAL_NORM: "model.norm.weight",
              LM_HEAD: "lm_head.weight"}
_HF_LAYER = {  # layer_names() key -> HF name inside model.layers.{i}.
    "wq": "self_attn.q_proj.weight", "wk": "self_attn.k_proj.weight",
    "wv": "self_attn.v_proj.weight", "wo": "self_attn.o_proj.weight",
    "w1": "mlp.gate_proj.weight", "w2": "mlp.down_proj.weight", "w3": "mlp.up_proj.weight",
    "attention_norm": "input_layernorm.weight", "ffn_norm": "post_attention_layernorm.weight",
}
# config.json keys that decide tensor shapes or the maths; seq_length and token ids may differ.
_HF_ARCH_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                 "num_attention_heads", "num_key_value_heads", "rms_norm_eps", "rope_theta",
                 "tie_word_embeddings")
_HF_REQUIRED_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads")
_FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
_ST_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}
_ST_CODES = {"float16": "F16", "float32": "F32", "float64": "F64"}


class CheckpointError(ValueError):
    """A checkpoint is unreadable or does not match the model config; the message says where."""


@dataclass(frozen=True)
class _Stored:
    """One tensor of a checkpoint, described before its data is read."""
    shape: tuple[int, ...]
    dtype: str
    read: Callable[[], np.ndarray]


def hf_names(cfg: LlamaConfig) -> dict[str, str]:
    """mindformers name -> HF name for every tensor of `cfg`, in `expected_shapes` order."""
    names = dict(_HF_GLOBAL)
    for i in range(cfg.num_layers):
        for key, name in layer_names(i).items():
            names[name] = f"model.layers.{i}.{_HF_LAYER[key]}"
    return {name: names[name] for name in expected_shapes(cfg)}


def load_weights(path: str, cfg: LlamaConfig, dtype: type = np.float32) -> dict[str, np.ndarray]:
    """Weights of `cfg` from a mindformers `.ckpt` file or an HF folder, cast to `dtype`."""
    if os.path.isdir(path):
        _check_hf_config(path, cfg)
        stored = _read_hf_folder(path)
        names = hf_names(cfg)
    elif os.path.isfile(path) and path.endswith(".ckpt"):
        stored = _read_ckpt(path)
        names = {name: name for name in expected_shapes(cfg)}
    elif os.path.exists(path):
        raise CheckpointError(f"{path}: neither a MindSpore .ckpt file nor an HF folder (pass the "
                              f"folder that holds {HF_CONFIG} and the .safetensors files)")
    else:
        raise CheckpointError(f"{path}: no such file or folder")
    _validate(path, {name: (s.shape, s.dtype) for name, s in stored.items()},
              {names[k]: shape for k, shape in expected_shapes(cfg).items()})
    # pop as we go: each source tensor is released once converted, which bounds peak memory
    return {k: stored.pop(names[k]).read().astype(dtype, copy=False) for k in expected_shapes(cfg)}


def read_hf_config(folder: str) -> LlamaConfig:
    path = os.path.join(folder, HF_CONFIG)
    if not os.path.isfile(path):
        raise CheckpointError(f"{folder}: no {HF_CONFIG}, so not an HF checkpoint folder")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: must hold a JSON object, got {type(data).__name__}")
    missing = [key for key in _HF_REQUIRED_KEYS if data.get(key) is None]
    if missing:
        raise CheckpointError(f"{path}: required key(s) missing: {', '.join(missing)}")
    try:
        return config_from_hf(data)
    except (ConfigError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: {e}") from e


def save_ckpt(weights: dict[str, np.ndarray], path: str) -> None:
    """Write a mindformers `.ckpt` file (tensors in the given order and dtypes)."""
    if not path.endswith(".ckpt"):  # MindSpore would silently append ".ckpt" to the name
        raise CheckpointError(f"{path}: a MindSpore checkpoint file name must end in .ckpt")
    mindspore.save_checkpoint(
        [{"name": name, "data": mindspore.Tensor(np.ascontiguousarray(w))} for name, w in weights.items()],
        path)


def save_hf(weights: dict[str, np.ndarray], cfg: LlamaConfig, folder: str,
            shard_bytes: int = DEFAULT_SHARD_BYTES) -> None:
    """Write `config.json` and safetensors into `folder`, sharded with an index above shard_bytes."""
    if shard_bytes <= 0:
        raise CheckpointError(f"shard_bytes: must be > 0, got {shard_bytes}")
    _validate("weights to save", {name: (w.shape, str(w.dtype)) for name, w in weights.items()},
              expected_shapes(cfg))
    codes = {str(w.dtype) for w in weights.values()}
    if not codes <= set(_ST_CODES):
        raise CheckpointError(f"weights to save: dtype(s) {sorted(codes - set(_ST_CODES))} cannot be "
                              f"written by safetensors' numpy writer (allowed: {sorted(_ST_CODES)})")
    os.makedirs(folder, exist_ok=True)
    # Old shards next to new ones would be read together (or the old index followed), so never
    # write into a folder that already holds weights.
    old = _hf_weight_files(folder)
    if old:
        raise CheckpointError(f"{folder}: already holds HF weights ({', '.join(sorted(old))}); "
                              f"write into an empty folder")
    hf = {hf_name: np.ascontiguousarray(weights[name]) for name, hf_name in hf_names(cfg).items()}
    shards = _split(hf, shard_bytes)
    metadata = {"format": "pt"}  # transformers refuses safetensors files without it
    if len(shards) == 1:
        save_file(shards[0], os.path.join(folder, HF_SINGLE), metadata=metadata)
    else:
        weight_map = {}
        for i, shard in enumerate(shards, 1):
            file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, os.path.join(folder, file), metadata=metadata)
            weight_map.update(dict.fromkeys(shard, file))
        index = {"metadata": {"total_size": sum(w.nbytes for w in hf.values())},
                 "weight_map": dict(sorted(weight_map.items()))}
        _write_json(os.path.join(folder, HF_INDEX), index)
    hf_config = config_to_hf(cfg)
    hf_config["torch_dtype"] = str(weights[EMBEDDING].dtype)
    _write_json(os.path.join(folder, HF_CONFIG), hf_config)


def _split(tensors: dict[str, np.ndarray], shard_bytes: int) -> list[dict[str, np.ndarray]]:
    """Consecutive groups of at most shard_bytes (a larger tensor gets a shard of its own)."""
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, w in tensors.items():
        if shards[-1] and size + w.nbytes > shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = w
        size += w.nbytes
    return shards


def _write_json(path: str, data: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")


def _validate(source: str, found: dict[str, tuple[tuple[int, ...], str]],
              expected: dict[str, tuple[int, ...]]) -> None:
    """Raise one CheckpointError listing every missing, extra, mis-shaped or non-float tensor.

    `found` maps each stored tensor's name to its (shape, dtype name).
    """
    problems = {}
    for name in expected.keys() - found.keys():
        problems[name] = f"missing (expected shape {expected[name]})"
    for name in found.keys() - expected.keys():
        problems[name] = f"unexpected for this model config (found shape {found[name][0]})"
    for name in expected.keys() & found.keys():
        shape, dtype = found[name]
        if shape != expected[name]:
            problems[name] = f"expected shape {expected[name]}, found {shape}"
        elif dtype not in _FLOAT_DTYPES:
            problems[name] = f"dtype {dtype} is not a float type {_FLOAT_DTYPES}"
    if problems:
        lines = "\n".join(f"  tensor '{name}': {problems[name]}" for name in sorted(problems))
        raise CheckpointError(f"{source}: {len(problems)} tensor(s) do not match the model config:\n"
                              f"{lines}")


def _check_hf_config(folder: str, cfg: LlamaConfig) -> None:
    found, wanted = config_to_hf(read_hf_config(folder)), config_to_hf(cfg)
    diffs = [f"'{key}' is {found[key]!r} but the model config has {wanted[key]!r}"
             for key in _HF_ARCH_KEYS if found[key] != wanted[key]]
    if diffs:
        raise CheckpointError(f"{os.path.join(folder, HF_CONFIG)} disagrees with the model config: "
                              + "; ".join(diffs))


def _read_ckpt(path: str) -> dict[str, _Stored]:
    try:
        params = mindspore.load_checkpoint(path)
    except ValueError as e:  # MindSpore's message says what is wrong with the file
        raise CheckpointError(f"{path}: not a readable MindSpore checkpoint: {e}") from e
    return {name: _Stored(tuple(p.shape), str(p.dtype).lower(), p.asnumpy) for name, p in params.items()}


def _hf_weight_files(folder: str) -> list[str]:
    found = glob.glob(os.path.join(folder, "model-*-of-*.safetensors"))
    found += [os.path.join(folder, f) for f in (HF_SINGLE, HF_INDEX) if os.path.exists(os.path.join(folder, f))]
    return [os.path.basename(f) for f in found]


def _read_hf_folder(folder: str) -> dict[str, _Stored]:
    index = os.path.join(folder, HF_INDEX)
    if os.path.isfile(index):
        try:
            with open(index, encoding="utf-8") as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{index}: not a safetensors index with a 'weight_map' ({e!r})") from e
    elif os.path.isfile(os.path.join(folder, HF_SINGLE)):
        files = [HF_SINGLE]
    else:
        raise CheckpointError(f"{folder}: holds neither {HF_SINGLE} nor {HF_INDEX} (only safetensors "
                              f"weights are read; convert pytorch_model*.bin files first)")
    stored: dict[str, _Stored] = {}
    for file in files:
        path = os.path.join(folder, file)
        if not os.path.isfile(path):
            raise CheckpointError(f"{index}: lists shard {file}, which does not exist")
        for name, tensor in _read_safetensors(path).items():
            if name in stored:
                raise CheckpointError(f"{folder}: tensor '{name}' is stored in more than one shard")
            if not name.endswith("rotary_emb.inv_freq"):  # a buffer derived from rope_theta
                stored[name] = tensor
    return stored


def _read_safetensors(path: str) -> dict[str, _Stored]:
    """Tensor descriptions from a safetensors header (8-byte little-endian length, JSON, data).

    Read directly rather than with safetensors' numpy loader, which rejects bfloat16 tensors:
    numpy has no such type, and many HF Llama-2 checkpoints are stored in it.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        length = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
        if not 0 < length <= size - 8:
            raise CheckpointError(f"{path}: not a safetensors file (bad header length)")
        try:
            header = json.loads(f.read(length))
            header.pop("__metadata__", None)
            entries = {name: (info["dtype"], tuple(info["shape"]), *info["data_offsets"])
                       for name, info in header.items()}
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError,
                ValueError) as e:
            raise CheckpointError(f"{path}: not a safetensors file (bad header: {e!r})") from e
    stored = {}
    for name, (code, shape, begin, end) in entries.items():
        dtype = _ST_DTYPES.get(code, code)
        if dtype in _FLOAT_DTYPES:
            itemsize = 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize
            if end - begin != math.prod(shape) * itemsize or 8 + length + end > size:
                raise CheckpointError(f"{path}: tensor '{name}': data span {begin}..{end} does not "
                                      f"fit shape {shape} of {dtype} in a {size}-byte file")
        stored[name] = _Stored(shape, dtype, partial(_read_span, path, 8 + length + begin, dtype, shape))
    return stored


def _read_span(path: str, offset: int, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    if dtype == "bfloat16":  # the upper half of a float32, so widening is exact
        raw = np.fromfile(path, dtype="<u2", count=math.prod(shape), offset=offset)
        return (raw.astype(np.uint32) << 16).view(np.float32).reshape(shape)
    return np.fromfile(path, dtype=np.dtype(dtype).newbyteorder("<"), count=math.prod(shape),
                       offset=offset).reshape(shape)
