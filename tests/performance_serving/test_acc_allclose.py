"""acc_allclose.py: pairing by name, the allclose criterion, missing files, the original kit's
pickled-Tensor files, and the command's output and exit codes."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

PERF_DIR = Path(__file__).resolve().parents[2] / "performance_serving"
sys.path.insert(0, str(PERF_DIR))

from acc_allclose import LogitsFileError, LogitsSource, compare_folders, load_logits, pair_key  # noqa: E402

VOCAB = 512
# `<ids>_<p>`: the first prompt ids joined as digits, then the position (PROTOCOL.md §3).
KEYS = ["13087_0", "13087_100", "115043_0", "115043_100", "115043_200"]


def _write_folder(folder: Path, names: list[str]) -> dict[str, np.ndarray]:
    """One logits row per name, the same row for the same name in every folder."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = {}
    for name in names:
        rng = np.random.default_rng(zlib.crc32(name.encode()))
        rows[name] = (rng.standard_normal(VOCAB) * 5).astype(np.float32)
        np.save(folder / f"{name}.npy", rows[name])
    return rows


def _run(base: Path, new: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(PERF_DIR / "acc_allclose.py"), "--base_path", str(base),
                           "--new_path", str(new)], capture_output=True, text=True, timeout=60)


def test_pair_key_drops_only_a_leading_timestamp():
    assert pair_key("1712345678.123456_13087_100.npy") == "13087_100"
    assert pair_key("1712345678_13087_0.npy") == "13087_0"
    assert pair_key("13087_100.npy") == "13087_100"       # ids key, not a timestamp
    assert pair_key("abc_13087_100.npy") == "abc_13087_100"


def test_identical_folders_pass(tmp_path):
    _write_folder(tmp_path / "base", KEYS)
    _write_folder(tmp_path / "new", KEYS)
    report = compare_folders(tmp_path / "base", tmp_path / "new")
    assert report.ok and (report.passed, report.total) == (5, 5)
    assert all(p.max_abs_diff == 0.0 for p in report.pairs)
    result = _run(tmp_path / "base", tmp_path / "new")
    assert result.returncode == 0 and result.stdout.startswith("passed 5/5"), result.stdout + result.stderr


def test_original_timestamped_names_pair_with_ours(tmp_path):
    rows = _write_folder(tmp_path / "new", KEYS)
    (tmp_path / "base").mkdir()
    for i, (name, row) in enumerate(rows.items()):
        np.save(tmp_path / "base" / f"17123456{i:02d}.5_{name}.npy", row[None, :])  # [1, vocab] rows too
    report = compare_folders(tmp_path / "base", tmp_path / "new")
    assert report.ok and report.total == 5


def test_a_1e_2_change_fails_and_is_named(tmp_path):
    _write_folder(tmp_path / "base", KEYS)
    rows = _write_folder(tmp_path / "new", KEYS)
    changed = rows["115043_100"].copy()
    changed[17] += 1e-2
    np.save(tmp_path / "new" / "115043_100.npy", changed)
    tiny = rows["13087_0"].copy()
    tiny[3] += 1e-3  # inside atol: still passes
    np.save(tmp_path / "new" / "13087_0.npy", tiny)
    report = compare_folders(tmp_path / "base", tmp_path / "new")
    failed = [p for p in report.pairs if not p.passed]
    assert [p.key for p in failed] == ["115043_100"]
    assert failed[0].max_abs_diff == pytest.approx(1e-2, rel=1e-3)
    result = _run(tmp_path / "base", tmp_path / "new")
    assert result.returncode == 1 and result.stdout.startswith("passed 4/5")
    worst = result.stdout.splitlines()[2]
    assert "FAIL" in worst and "115043_100" in worst


def test_missing_partner_fails_and_extra_files_do_not(tmp_path):
    _write_folder(tmp_path / "base", KEYS)
    _write_folder(tmp_path / "new", KEYS[1:] + ["1999_0"])
    report = compare_folders(tmp_path / "base", tmp_path / "new")
    assert (report.missing, report.extra, report.ok) == (["13087_0"], ["1999_0"], False)
    result = _run(tmp_path / "base", tmp_path / "new")
    assert result.returncode == 1 and result.stdout.startswith("passed 4/5")
    assert "missing in new_path (failures): 1\n  13087_0" in result.stdout
    assert "extra in new_path (not compared): 1\n  1999_0" in result.stdout
    _write_folder(tmp_path / "more", KEYS + ["1999_0"])
    assert _run(tmp_path / "base", tmp_path / "more").returncode == 0


def test_shape_mismatch_fails_with_both_shapes(tmp_path):
    _write_folder(tmp_path / "base", KEYS[:1])
    (tmp_path / "new").mkdir()
    np.save(tmp_path / "new" / f"{KEYS[0]}.npy", np.zeros(VOCAB - 1, dtype=np.float32))
    (pair,) = compare_folders(tmp_path / "base", tmp_path / "new").pairs
    assert not pair.passed and f"({VOCAB - 1},)" in pair.reason and f"({VOCAB},)" in pair.reason


def test_usage_errors_exit_2(tmp_path):
    _write_folder(tmp_path / "base", KEYS[:1])
    result = _run(tmp_path / "base", tmp_path / "absent")
    assert result.returncode == 2 and "--new_path: folder not found" in result.stderr
    (tmp_path / "empty").mkdir()
    result = _run(tmp_path / "empty", tmp_path / "base")
    assert result.returncode == 2 and "no .npy files" in result.stderr


def test_pickled_file_without_mindspore_names_the_need(tmp_path):
    obj = np.empty(1, dtype=object)
    obj[0] = "not a tensor"
    np.save(tmp_path / "x_0.npy", obj, allow_pickle=True)
    if importlib.util.find_spec("mindspore") is None:
        with pytest.raises(LogitsFileError, match="needs mindspore"):
            load_logits(LogitsSource(tmp_path / "x_0.npy"))
    else:
        with pytest.raises(LogitsFileError, match="x_0.npy: cannot convert"):
            load_logits(LogitsSource(tmp_path / "x_0.npy"))


@pytest.mark.skipif(importlib.util.find_spec("mindspore") is None, reason="mindspore not installed")
def test_original_kit_files_of_mindspore_tensors_are_read(tmp_path):
    import mindspore as ms

    rows = _write_folder(tmp_path / "new", KEYS[:2])
    (tmp_path / "base").mkdir()
    for name, row in rows.items():
        obj = np.empty(1, dtype=object)
        obj[0] = ms.Tensor(row[None, :])  # the original saved [1, vocab] Tensors in an object array
        np.save(tmp_path / "base" / f"1712345678.25_{name}.npy", obj, allow_pickle=True)
    loaded = load_logits(LogitsSource(tmp_path / "base" / f"1712345678.25_{KEYS[0]}.npy"))
    assert loaded.shape == (1, 1, VOCAB)
    assert loaded.dtype == np.float64 and np.array_equal(loaded[0, 0], rows[KEYS[0]])
    report = compare_folders(tmp_path / "base", tmp_path / "new")
    assert report.total == 2 and report.ok and all(p.max_abs_diff == 0.0 for p in report.pairs)


def test_an_npz_archive_counts_as_its_npy_members(tmp_path):
    import zipfile
    rows = _write_folder(tmp_path / "new", KEYS)
    (tmp_path / "base").mkdir()
    with zipfile.ZipFile(tmp_path / "base" / "base.npz", "w", zipfile.ZIP_BZIP2) as zf:
        for name, row in rows.items():
            with zf.open(f"{name}.npy", "w") as member:
                np.lib.format.write_array(member, row)
    assert _run(tmp_path / "base", tmp_path / "new").returncode == 0
    changed = rows[KEYS[1]].copy()
    changed[3] += 1e-2
    np.save(tmp_path / "new" / f"{KEYS[1]}.npy", changed)
    result = _run(tmp_path / "base", tmp_path / "new")
    assert result.returncode == 1 and KEYS[1] in result.stdout
