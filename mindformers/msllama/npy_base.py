"""Build `file_npy_base/`: task-2 reference logits from the float64 numpy reference model.

    python -m msllama.npy_base [--config predict.yaml] [--dataset alpaca_521.json] [--records 500]
                               [--out file_npy_base] [--workers 2]
    python -m msllama.npy_base --subset-of file_npy_base/alpaca_521_500.npz --records 50 --out DIR

The second form copies the rows of the first N records out of an existing archive (a run over
fewer records needs a baseline of exactly those records: every base file must have a partner).

For each record (prompt built as the judge builds it, greedy, max_new_tokens = the piece count of
the reference output) the rows at the positions of `msllama.logits_files.saved_positions` are
written, named by `logits_files.file_name`. Independent of the serving path on purpose.

Near-ties: where the reference's best and second-best logits differ by less than TIE_MARGIN, the
greedy token is not determined by an fp32 model (ours is within ~2e-5 of float64, and the error
moves with the batch's matmul blocking), and everything generated after it may differ. Rows past
such a step are left out (and counted): no fp32 implementation could be held to them.

The rows go into one compressed archive, `<out>/<name>.npz`, whose members are exactly the
`<key>_<p>.npy` files (`unzip` gives the folder of .npy files; acc_allclose reads either). Values
are rounded to multiples of 2^-10 (error <= 4.9e-4, a tenth of the contest's atol 5e-3), which
lets the bzip2-compressed archive shrink to ~55 %: 500 records of a 32000-token vocabulary
stay < 20 MB.
"""
from __future__ import annotations

import argparse
import json
import os
import time
import zipfile
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from . import logits_files
from .assets import DEBUG_DIR, DEBUG_PREDICT_YAML

QUANTUM = 2.0 ** -10
TIE_MARGIN = 1e-4   # top-1 minus top-2 logit below which the greedy choice is fp32 noise


def judge_prompt(record: dict) -> str:
    return record["instruction"] + ":" + record["input"] if record["input"] else record["instruction"]


def _worker_init(config_path: str, tokenizer_path: str) -> None:
    global _REF, _TOK
    from .checkpoint import load_weights
    from .config import load_predict_config
    from .reference import ReferenceModel
    from .tokenizer import Tokenizer

    pc = load_predict_config(config_path)
    _REF = ReferenceModel(pc.model, load_weights(pc.runtime.checkpoint, pc.model))
    _TOK = Tokenizer(tokenizer_path or pc.runtime.tokenizer)


def first_tie(rows: list[np.ndarray]) -> int | None:
    """Index of the first row whose two largest logits are closer than TIE_MARGIN, or None."""
    for i, row in enumerate(rows):
        top2 = np.partition(np.asarray(row, np.float64), -2)[-2:]
        if top2[1] - top2[0] < TIE_MARGIN:
            return i
    return None


def _record_rows(record: dict) -> tuple[list[tuple[str, np.ndarray]], int]:
    """The record's (file name, row) pairs and how many saved positions a near-tie left out."""
    ids = _TOK.encode(judge_prompt(record))
    generated, rows = _REF.greedy(ids, _TOK.piece_count(record["output"]))
    # rows[i] holds the logits after the input token at position len(ids) - 1 + i
    tie = first_tie(rows)
    last_defined = len(ids) + len(generated) if tie is None else len(ids) - 1 + tie
    positions = logits_files.saved_positions(len(ids), len(generated))
    out = []
    for p in (p for p in positions if p <= last_defined):
        full = ids + generated
        if p < len(ids) - 1:  # inside the prompt: recompute the prefix
            row = _REF.forward(full[:p + 1])[-1]
        else:
            row = rows[p - (len(ids) - 1)]
        out.append((logits_files.file_name(ids, p), quantize(row)))
    return out, len(positions) - len(out)


def quantize(row: np.ndarray) -> np.ndarray:
    return (np.round(np.asarray(row, np.float64) / QUANTUM) * QUANTUM).astype(np.float32)


def build(config_path: str, dataset: str, records: int, out_dir: str, workers: int, tokenizer_path: str = "") -> str:
    with open(dataset, encoding="utf-8") as f:
        data = json.load(f)[:records]
    os.makedirs(out_dir, exist_ok=True)
    name = f"{os.path.splitext(os.path.basename(dataset))[0]}_{len(data)}.npz"
    path = os.path.join(out_dir, name)
    tmp = path + ".tmp"
    start, written, tied = time.time(), set(), 0
    with ProcessPoolExecutor(workers, initializer=_worker_init, initargs=(config_path, tokenizer_path)) as pool, \
            zipfile.ZipFile(tmp, "w", zipfile.ZIP_BZIP2) as zf:
        for i, (rows, left_out) in enumerate(pool.map(_record_rows, data, chunksize=4)):
            tied += left_out
            for file_name, row in rows:
                if file_name in written:    # a repeated prompt: once per (prompt, position)
                    continue
                with zf.open(file_name, "w") as member:
                    np.lib.format.write_array(member, row)
                written.add(file_name)
            if (i + 1) % 25 == 0 or i + 1 == len(data):
                print(f"  {i + 1}/{len(data)} records, {len(written)} rows, {time.time() - start:.0f} s", flush=True)
    os.replace(tmp, path)
    print(f"wrote {path}: {len(written)} rows, {os.path.getsize(path) / 1e6:.1f} MB; {tied} rows left out "
          f"after a near-tie (top-2 logits < {TIE_MARGIN} apart)")
    return path


def subset(archive: str, config_path: str, dataset: str, records: int, out_dir: str, tokenizer_path: str = "") -> str:
    """Copy the members belonging to the first `records` records of `dataset` into a new archive."""
    from .config import load_predict_config
    from .tokenizer import Tokenizer

    tok = Tokenizer(tokenizer_path or load_predict_config(config_path).runtime.tokenizer)
    with open(dataset, encoding="utf-8") as f:
        data = json.load(f)[:records]
    keys = {logits_files.prompt_key(tok.encode(judge_prompt(r))) for r in data}
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{os.path.splitext(os.path.basename(dataset))[0]}_{len(data)}.npz")
    with zipfile.ZipFile(archive) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_BZIP2) as dst:
        members = [m for m in src.namelist() if m.rpartition("_")[0] in keys]
        for m in members:
            dst.writestr(m, src.read(m))
    print(f"wrote {path}: {len(members)} rows of the first {len(data)} records")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description="reference logits for task 2 (file_npy_base)")
    parser.add_argument("--config", default=DEBUG_PREDICT_YAML, help="mindformers predict YAML")
    parser.add_argument("--dataset", default=os.path.join(DEBUG_DIR, "alpaca_521.json"))
    parser.add_argument("--records", type=int, default=500)
    parser.add_argument("--out", default="file_npy_base")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--tokenizer", default="", help="overrides the predict YAML's vocab_file")
    parser.add_argument("--subset-of", default="", help="copy the first --records records' rows from this archive")
    args = parser.parse_args()
    if args.subset_of:
        subset(args.subset_of, args.config, args.dataset, args.records, args.out, args.tokenizer)
    else:
        build(args.config, args.dataset, args.records, args.out, args.workers, args.tokenizer)


if __name__ == "__main__":
    main()
