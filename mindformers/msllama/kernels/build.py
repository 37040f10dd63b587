"""Compile a kernel's C++ source into a shared library with the system g++, once per machine.

The library lands in a cache folder (default `<repo>/.cache/kernels`, or `$MSLLAMA_KERNEL_CACHE`)
under a name keyed by everything that changes the binary: the source and the shared headers, the
flags, the compiler version and the CPU (the build uses `-march=native`). Concurrent processes build to a private
temporary file and rename it into place, so a reader never sees a half-written library.
"""
from __future__ import annotations

import ctypes
import dataclasses
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

FLAGS = ("-std=c++17", "-O3", "-march=native", "-fno-math-errno", "-fopenmp-simd", "-pthread", "-shared",
         "-fPIC")
HEADERS = Path(__file__).resolve().parent  # the kernels' shared headers (-I); part of every library's key
CACHE_ENV = "MSLLAMA_KERNEL_CACHE"
COMPILER_ENV = "CXX"
BUILD_TIMEOUT_S = 120


class KernelUnavailable(RuntimeError):
    """The kernel cannot be built or loaded here (no compiler, compile error); the message says why."""


@dataclass(frozen=True)
class Library:
    path: Path
    build_seconds: float  # 0.0 when it came from the cache


def default_cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path(__file__).resolve().parents[3] / ".cache" / "kernels"


def compiler() -> str:
    """Path of the C++ compiler ($CXX, else g++ on PATH)."""
    name = os.environ.get(COMPILER_ENV, "g++")
    found = shutil.which(name)
    if found is None:
        raise KernelUnavailable(f"C++ compiler '{name}' not found on PATH (set ${COMPILER_ENV} or install g++)")
    return found


@functools.lru_cache(maxsize=None)
def _compiler_identity(cxx: str) -> str:
    try:
        return subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise KernelUnavailable(f"C++ compiler '{cxx}' does not run: {e}") from e


def _cpu_identity() -> str:
    """CPU model and feature flags: a library built with -march=native is only valid on this CPU."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return os.uname().machine


def library_key(source: Path, cxx: str) -> str:
    h = hashlib.sha256(source.read_bytes())
    # `#include "x.h"` looks beside the source before -I: a copy of a source elsewhere (an A/B of two
    # revisions) compiles the headers beside it, so those are part of its key too
    for folder in sorted({HEADERS, source.resolve().parent}):
        for header in sorted(folder.glob("*.h")):
            h.update(header.read_bytes())
    for part in (" ".join(FLAGS), _compiler_identity(cxx), _cpu_identity()):
        h.update(part.encode())
    return h.hexdigest()[:16]


def build_library(source: Path, cache_dir: Path | None = None) -> Library:
    """The compiled library of `source`, built now if the cache does not hold it yet."""
    cxx = compiler()
    out_dir = cache_dir or default_cache_dir()
    target = out_dir / f"{source.stem}-{library_key(source, cxx)}.so"
    if target.is_file():
        return Library(target, 0.0)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=target.stem + ".", suffix=".tmp", dir=out_dir)
        os.close(fd)
    except OSError as e:
        raise KernelUnavailable(f"kernel cache folder {out_dir} is not writable ({e}); set ${CACHE_ENV}") from e
    start = time.perf_counter()
    try:
        proc = subprocess.run([cxx, *FLAGS, "-I", str(HEADERS), "-o", tmp, str(source)], capture_output=True, text=True,
                              timeout=BUILD_TIMEOUT_S)
        if proc.returncode != 0:
            raise KernelUnavailable(f"compiling {source.name} failed:\n{proc.stderr.strip()}")
        os.replace(tmp, target)
    except subprocess.TimeoutExpired as e:
        raise KernelUnavailable(f"compiling {source.name} took more than {BUILD_TIMEOUT_S} s") from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return Library(target, time.perf_counter() - start)


@functools.lru_cache(maxsize=None)
def _loaded(source: Path, functions: tuple[str, ...]) -> Library | KernelUnavailable:
    # A failure is remembered too: every layer asks, and a failing compile should run once.
    try:
        lib = build_library(source)
        handle = ctypes.CDLL(str(lib.path))
        for name in functions:
            getattr(handle, name)  # fails here, not inside a graph launch
        return lib
    except KernelUnavailable as e:
        return e
    except (OSError, AttributeError) as e:
        return KernelUnavailable(f"cannot load {', '.join(functions)} from the library built from {source.name}: {e}")


def loaded_library(source: Path, functions: tuple[str, ...]) -> Library:
    """The library of `source`, built on first use and checked to export `functions`; raises
    KernelUnavailable with the reason (the same one on every call of this process)."""
    result = _loaded(source, functions)
    if isinstance(result, KernelUnavailable):
        raise result
    return result


def unless_built(rt: Any, key: str, value: Any, what: str, build: Callable[[], object]) -> Any:
    """`rt` (a RuntimeConfig) if `build()` succeeds; if it raises KernelUnavailable, `rt` with `key`
    set to `value`, after a warning that names the key, what it now uses instead (`what`) and why:
    the one way every kernel setting falls back."""
    try:
        build()
    except KernelUnavailable as e:
        warnings.warn(f"config key '{key}': {what} instead: {e}", RuntimeWarning, stacklevel=3)
        return dataclasses.replace(rt, **{key: value})
    return rt


def element_type(dtype: Any) -> Any:
    """The element type of a dtype that a Custom op's infer function receives (a TensorType or
    already the element type)."""
    import mindspore as ms

    return dtype.element_type() if isinstance(dtype, ms.TensorType) else dtype
