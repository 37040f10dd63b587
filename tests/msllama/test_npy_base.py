"""The committed file_npy_base matches the current debug assets (a stale baseline fails here,
not in a user's precision check)."""
from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import pytest

from msllama import assets, logits_files
from msllama.checkpoint import load_weights
from msllama.config import load_predict_config
from msllama.npy_base import QUANTUM, TIE_MARGIN, first_tie, judge_prompt
from msllama.reference import ReferenceModel
from msllama.tokenizer import Tokenizer

ARCHIVE = os.path.join(assets.ROOT, "file_npy_base", "alpaca_521_500.npz")


@pytest.fixture(scope="module")
def debug():
    paths = assets.build()
    pc = load_predict_config(assets.DEBUG_PREDICT_YAML)
    with open(paths["alpaca_521.json"], encoding="utf-8") as f:
        records = json.load(f)[:500]
    return pc, Tokenizer(paths["tokenizer.model"]), records


def test_archive_holds_the_rows_of_the_first_500_records_but_those_past_a_near_tie(debug):
    pc, tok, records = debug
    ids_of = {}
    expected = set()
    for r in records:
        ids = tok.encode(judge_prompt(r))
        # the debug model never emits EOS, so every request generates max_new_tokens
        names = {logits_files.file_name(ids, p) for p in logits_files.saved_positions(len(ids), tok.piece_count(r["output"]))}
        expected |= names
        ids_of.update({n: (ids, tok.piece_count(r["output"])) for n in names})
    with zipfile.ZipFile(ARCHIVE) as zf:
        names = set(zf.namelist())
    stale = ("file_npy_base is stale: regenerate it with `.venv/bin/python -m msllama.npy_base --out file_npy_base`")
    assert names <= expected, stale
    left_out = expected - names
    assert len(left_out) < 0.05 * len(expected), stale
    # each row left out lies past a near-tie of its record's greedy path (checked with float64)
    ref = ReferenceModel(pc.model, load_weights(pc.runtime.checkpoint, pc.model))
    for name in sorted(left_out):
        ids, n = ids_of[name]
        _, rows = ref.greedy(ids, n)
        tie = first_tie(rows)
        assert tie is not None and int(name.rpartition("_")[2].split(".")[0]) > len(ids) - 1 + tie, stale


def test_first_tie():
    rows = [np.array([0.0, 1.0, 3.0]), np.array([2.0, 2.0 + TIE_MARGIN / 2, 0.0]), np.array([0.0, 0.0, 0.0])]
    assert first_tie(rows) == 1
    assert first_tie(rows[:1]) is None


def test_rows_are_the_reference_model_s_logits(debug):
    pc, tok, records = debug
    ref = ReferenceModel(pc.model, load_weights(pc.runtime.checkpoint, pc.model))
    with zipfile.ZipFile(ARCHIVE) as zf:
        names = set(zf.namelist())
        checked = 0
        for r in records:
            ids = tok.encode(judge_prompt(r))
            n = tok.piece_count(r["output"])
            if logits_files.file_name(ids, 100) not in names or len(ids) + n > 160:
                continue
            generated, rows = ref.greedy(ids, n)
            with zf.open(logits_files.file_name(ids, 100)) as f:
                stored = np.lib.format.read_array(f)
            expected = rows[100 - (len(ids) - 1)] if len(ids) <= 101 else ref.forward(ids[:101])[-1]
            assert np.abs(stored - expected).max() <= QUANTUM / 2 + 1e-6
            checked += 1
            if checked == 3:
                break
    assert checked == 3
