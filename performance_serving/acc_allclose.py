"""Precision check of task 2: compare saved next-token logits against a baseline folder.

    python acc_allclose.py --base_path file_npy_base --new_path file_npy

Files are paired by name: `<key>_<p>.npy` (prompt key, position). A `.npz` archive in a folder
counts as the `.npy` files it holds (the kit ships its baseline that way, compressed). The original kit prefixed a
unix timestamp (`<time>_<ids20>_<p>.npy`); a leading timestamp component is ignored so that its
files pair with ours. A pair passes when `np.allclose(new, base, atol=5e-3, rtol=1e-5)` holds over
the whole row (shapes equal once size-1 axes are dropped). Every base file needs a partner; extra
new files are listed but do not fail. Exit code 0 iff every base file passes, 1 otherwise, 2 on
usage errors.
"""
from __future__ import annotations

import argparse
import importlib.util
import re
import sys
import zipfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

ATOL = 5e-3
RTOL = 1e-5
_TIMESTAMP = re.compile(r"\d+(\.\d+)?")


class LogitsFileError(ValueError):
    """A .npy file cannot be read as a float array; the message names the file."""


@dataclass(frozen=True)
class LogitsSource:
    """One `<key>_<p>.npy`: a file, or a member of a `.npz` archive."""
    path: Path
    member: str = ""

    @property
    def name(self) -> str:
        return self.member or self.path.name

    def __str__(self) -> str:
        return f"{self.path}:{self.member}" if self.member else str(self.path)


def pair_key(file_name: str) -> str:
    """`<time>_<key>_<p>.npy` and `<key>_<p>.npy` both give `<key>_<p>`."""
    parts = file_name[: -len(".npy")].split("_")
    # Three parts at least: in `<ids20>_<p>` the all-digit ids are the key, not a timestamp.
    if len(parts) >= 3 and _TIMESTAMP.fullmatch(parts[0]):
        parts = parts[1:]
    return "_".join(parts)


def _sort_key(key: str) -> Tuple[str, int]:
    head, _, pos = key.rpartition("_")
    return (head, int(pos)) if pos.isdigit() else (key, -1)


def load_logits(source: LogitsSource) -> np.ndarray:
    """A float64 array from a plain .npy, or from the original kit's object array of MindSpore Tensors."""
    if source.member:
        try:
            with zipfile.ZipFile(source.path) as zf, zf.open(source.member) as f:
                arr = np.lib.format.read_array(f, allow_pickle=False)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise LogitsFileError(f"{source}: not a readable .npy member ({exc})") from None
        return _check_floats(source, arr)
    path = source.path
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" not in str(exc):
            raise LogitsFileError(f"{path}: not a readable .npy file ({exc})") from None
        arr = _load_pickled(path)
    except (OSError, EOFError) as exc:
        raise LogitsFileError(f"{path}: not a readable .npy file ({exc})") from None
    return _check_floats(source, arr)


def _check_floats(source: LogitsSource, arr: np.ndarray) -> np.ndarray:
    if arr.dtype.kind not in "fiu":
        raise LogitsFileError(f"{source}: holds {arr.dtype} values, expected floats")
    return arr.astype(np.float64)


def _load_pickled(path: Path) -> np.ndarray:
    # Unpickling the original's files needs the classes they hold: MindSpore Tensors.
    if importlib.util.find_spec("mindspore") is None:
        raise LogitsFileError(f"{path}: holds pickled objects (the original kit saved MindSpore Tensors); "
                              "reading it needs mindspore installed")
    try:
        obj = np.load(path, allow_pickle=True)
        rows = [np.asarray(e.asnumpy() if hasattr(e, "asnumpy") else e, dtype=np.float64) for e in obj.ravel()]
        return np.stack(rows).reshape(obj.shape + rows[0].shape)
    except Exception as exc:  # anything the pickle holds may fail to convert; name the file
        raise LogitsFileError(f"{path}: cannot convert its pickled objects to floats ({exc})") from None


@dataclass
class PairResult:
    key: str
    passed: bool
    max_abs_diff: Optional[float]   # None when the pair could not be compared
    reason: str = ""


@dataclass
class Report:
    pairs: List[PairResult] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)    # base keys without a new file
    extra: List[str] = field(default_factory=list)      # new keys without a base file

    @property
    def passed(self) -> int:
        return sum(p.passed for p in self.pairs)

    @property
    def total(self) -> int:
        return len(self.pairs) + len(self.missing)

    @property
    def ok(self) -> bool:
        return self.total > 0 and self.passed == self.total


def sources(folder: Path) -> List[LogitsSource]:
    """The .npy files of a folder and the .npy members of its .npz archives."""
    found = [LogitsSource(p) for p in sorted(folder.glob("*.npy"))]
    for archive in sorted(folder.glob("*.npz")):
        try:
            with zipfile.ZipFile(archive) as zf:
                found += [LogitsSource(archive, m) for m in sorted(zf.namelist()) if m.endswith(".npy")]
        except zipfile.BadZipFile as exc:
            raise LogitsFileError(f"{archive}: not a readable .npz archive ({exc})") from None
    return found


def index_folder(folder: Path) -> Tuple[Dict[str, LogitsSource], Dict[str, List[str]]]:
    """Key -> file, and the keys claimed by several files (which cannot be paired)."""
    by_key: Dict[str, List[LogitsSource]] = defaultdict(list)
    for source in sources(folder):
        by_key[pair_key(source.name)].append(source)
    unique = {k: v[0] for k, v in by_key.items() if len(v) == 1}
    clashes = {k: [p.name for p in v] for k, v in by_key.items() if len(v) > 1}
    return unique, clashes


def compare_pair(key: str, base_file: LogitsSource, new_file: LogitsSource, atol: float, rtol: float) -> PairResult:
    try:
        base, new = np.squeeze(load_logits(base_file)), np.squeeze(load_logits(new_file))
    except LogitsFileError as exc:
        return PairResult(key, False, None, str(exc))
    if base.shape != new.shape:
        return PairResult(key, False, None, f"shape {new.shape} in new_path vs {base.shape} in base_path")
    diff = float(np.max(np.abs(new - base))) if base.size else 0.0
    return PairResult(key, bool(np.allclose(new, base, atol=atol, rtol=rtol)), diff)


def compare_folders(base_dir: Path, new_dir: Path, atol: float = ATOL, rtol: float = RTOL) -> Report:
    base, base_clashes = index_folder(base_dir)
    new, new_clashes = index_folder(new_dir)
    report = Report(extra=sorted(set(new) - set(base) - set(base_clashes), key=_sort_key))
    for key, names in base_clashes.items():
        report.pairs.append(PairResult(key, False, None, f"several base files share this key: {names}"))
    for key in sorted(base, key=_sort_key):
        if key in new_clashes:
            report.pairs.append(PairResult(key, False, None, f"several new files share this key: {new_clashes[key]}"))
        elif key not in new:
            report.missing.append(key)
        else:
            report.pairs.append(compare_pair(key, base[key], new[key], atol, rtol))
    return report


def format_report(report: Report, atol: float, rtol: float, worst: int) -> str:
    lines = [f"passed {report.passed}/{report.total} (np.allclose atol={atol}, rtol={rtol})"]
    # Uncomparable pairs first, then the largest differences.
    ranked = sorted(report.pairs, key=lambda p: (p.max_abs_diff is not None, -(p.max_abs_diff or 0.0)))
    if ranked and worst > 0:
        lines.append(f"worst pairs (max abs diff, key), {min(worst, len(ranked))} of {len(ranked)}:")
        for p in ranked[:worst]:
            diff = "n/a" if p.max_abs_diff is None else f"{p.max_abs_diff:.3e}"
            lines.append(f"  {diff:>10}  {'ok  ' if p.passed else 'FAIL'}  {p.key}{'  ' + p.reason if p.reason else ''}")
    for title, keys in (("missing in new_path (failures)", report.missing),
                        ("extra in new_path (not compared)", report.extra)):
        if keys:
            lines.append(f"{title}: {len(keys)}")
            lines.extend(f"  {k}" for k in keys)
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base_path", required=True, help="folder of baseline .npy files (or .npz archives)")
    parser.add_argument("--new_path", required=True, help="folder of .npy files to check")
    parser.add_argument("--atol", type=float, default=ATOL)
    parser.add_argument("--rtol", type=float, default=RTOL)
    parser.add_argument("--worst", type=int, default=10, help="how many of the worst pairs to print")
    args = parser.parse_args(argv)
    base_dir, new_dir = Path(args.base_path), Path(args.new_path)
    for flag, folder in (("--base_path", base_dir), ("--new_path", new_dir)):
        if not folder.is_dir():
            print(f"error: {flag}: folder not found: {folder}", file=sys.stderr)
            return 2
    try:
        if not sources(base_dir):
            print(f"error: --base_path: no .npy files (or .npz archives of them) in {base_dir}", file=sys.stderr)
            return 2
        report = compare_folders(base_dir, new_dir, args.atol, args.rtol)
    except LogitsFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_report(report, args.atol, args.rtol, args.worst))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
