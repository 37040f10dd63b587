from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from msllama import debug_data
from msllama.debug_data import (DATASET_PROFILES, MANIFEST_FILE, TOKENIZER_FILE, build_all,
                                build_datasets, build_tokenizer, length_quantiles, measure_lengths)
from msllama.tokenizer import Tokenizer

# Piece counts measured on the contest's files with the Llama-2 tokenizer:
# (records, prompt mean, median, max, output mean, median, max).
CONTEST_STATS = {
    ("alpaca_5010.json", 1500): (19.95, 16, 192, 65.39, 46, 504),
    ("alpaca_5010.json", 5010): (19.68, 16, 192, 64.89, 47.5, 822),
    ("alpaca_521.json", 521): (21.69, 16, 337, 67.33, 51, 464),
}


def _load(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def test_tokenizer_shape(debug_tokenizer: Tokenizer) -> None:
    tok = debug_tokenizer
    sp = tok._sp
    assert tok.vocab_size == 32000
    assert [sp.IdToPiece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    assert [sp.IdToPiece(i) for i in (3, 258)] == ["<0x00>", "<0xFF>"]
    assert all(sp.IsByte(i) for i in range(3, 259))
    assert sp.pad_id() == -1
    # split_digits, and an unseen character falls back to bytes.
    assert [sp.IdToPiece(i) for i in tok.encode("2024", add_bos=False)][-4:] == ["2", "0", "2", "4"]
    assert [sp.IdToPiece(i) for i in tok.encode("\n", add_bos=False)] == ["▁", "<0x0A>"]


def test_builds_are_byte_identical(debug_assets: dict[str, str], tmp_path) -> None:
    tokenizer = build_tokenizer(str(tmp_path / TOKENIZER_FILE))
    with open(tokenizer, "rb") as a, open(debug_assets[TOKENIZER_FILE], "rb") as b:
        assert a.read() == b.read()
    for path in build_datasets(debug_assets[TOKENIZER_FILE], str(tmp_path)):
        with open(path, "rb") as a, open(debug_assets[os.path.basename(path)], "rb") as b:
            assert a.read() == b.read()


def test_other_seed_differs(debug_assets: dict[str, str], tmp_path) -> None:
    build_datasets(debug_assets[TOKENIZER_FILE], str(tmp_path), seed=1)
    name = "alpaca_521.json"
    assert _load(str(tmp_path / name)) != _load(debug_assets[name])


@pytest.mark.parametrize("name, records", sorted(CONTEST_STATS))
def test_dataset_lengths_follow_the_contest(debug_assets, debug_tokenizer, name: str, records: int) -> None:
    data = _load(debug_assets[name])
    assert len(data) == sum(p.records for p in DATASET_PROFILES[name])
    assert all(list(r) == ["instruction", "input", "output"] and all(isinstance(v, str) for v in r.values())
               for r in data)
    assert 0.3 < np.mean([r["input"] == "" for r in data]) < 0.8
    prompt, output = measure_lengths(data[:records], debug_tokenizer)
    p_mean, p_median, p_max, o_mean, o_median, o_max = CONTEST_STATS[name, records]
    for counts, mean, median, maximum in ((prompt, p_mean, p_median, p_max), (output, o_mean, o_median, o_max)):
        assert abs(counts.mean() - mean) <= 0.15 * mean
        assert abs(np.median(counts) - median) <= 3
        assert abs(counts.max() - maximum) <= 0.1 * maximum


def test_text_uses_multibyte_characters(debug_assets) -> None:
    text = "".join(v for r in _load(debug_assets["alpaca_5010.json"]) for v in r.values())
    assert any("\u4e00" <= c <= "\u9fff" for c in text)   # Chinese
    assert any(c in "éèêëáàâäíîóôöúüûñç" for c in text)    # accented Latin
    assert any(ord(c) >= 0x1F300 for c in text)            # emoji
    assert "\n2." in text                                 # numbered lists


def test_build_all_keeps_current_files(debug_assets: dict[str, str], tmp_path) -> None:
    out = tmp_path / "assets"
    shutil.copytree(os.path.dirname(debug_assets[TOKENIZER_FILE]), out)
    stamps = {name: os.stat(out / name).st_mtime_ns for name in debug_assets}
    assert build_all(str(out)) == {name: str(out / name) for name in debug_assets}
    assert {name: os.stat(out / name).st_mtime_ns for name in debug_assets} == stamps
    # A changed dataset is rebuilt; the tokenizer is kept.
    (out / "alpaca_521.json").write_text("[]", encoding="utf-8")
    build_all(str(out))
    assert os.stat(out / TOKENIZER_FILE).st_mtime_ns == stamps[TOKENIZER_FILE]
    with open(out / "alpaca_521.json", "rb") as a, open(debug_assets["alpaca_521.json"], "rb") as b:
        assert a.read() == b.read()
    assert json.loads((out / MANIFEST_FILE).read_text())["files"].keys() == debug_assets.keys()


def test_command_line(debug_assets: dict[str, str], tmp_path) -> None:
    out = tmp_path / "cli"
    shutil.copytree(os.path.dirname(debug_assets[TOKENIZER_FILE]), out)
    done = subprocess.run([sys.executable, "-m", "msllama.debug_data", "--out", str(out)],
                          capture_output=True, text=True, check=True)
    assert done.stdout.split() == [str(out / name) for name in debug_assets]


def test_embedded_quantiles_match_the_contest_files(contest_file) -> None:
    tok = Tokenizer(contest_file("tokenizer.model"))
    for name, profiles in DATASET_PROFILES.items():
        data = _load(contest_file(name))
        start = 0
        for profile in profiles:
            prompt, output = measure_lengths(data[start:start + profile.records], tok)
            assert (length_quantiles(prompt), length_quantiles(output)) == (profile.prompt, profile.output)
            start += profile.records
        assert start == len(data)


def test_judge_prompt() -> None:
    assert debug_data.judge_prompt({"instruction": "Do", "input": "", "output": ""}) == "Do"
    assert debug_data.judge_prompt({"instruction": "Do", "input": "this", "output": ""}) == "Do:this"
