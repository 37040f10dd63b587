"""Shared fixtures of the msllama tests."""
from __future__ import annotations

import os

import pytest

from msllama.debug_data import TOKENIZER_FILE, build_all
from msllama.tokenizer import Tokenizer

CONTEST_DIR = "/work/shared/contest"


@pytest.fixture(scope="session")
def debug_assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Debug tokenizer and stand-in datasets, built once per session: {file name: path}."""
    return build_all(str(tmp_path_factory.mktemp("debug_assets")))


@pytest.fixture(scope="session")
def debug_tokenizer(debug_assets: dict[str, str]) -> Tokenizer:
    return Tokenizer(debug_assets[TOKENIZER_FILE])


@pytest.fixture(scope="session")
def contest_file():
    """Path of a file of the real contest data; skips the test when it is absent."""
    def path(name: str) -> str:
        p = os.path.join(CONTEST_DIR, name)
        if not os.path.isfile(p):
            pytest.skip(f"{p} is absent")
        return p
    return path


@pytest.fixture(scope="module")
def kernels_built():
    """GRAPH_MODE on CPU with the C++ kernel libraries built; skips where they cannot be."""
    import mindspore as ms

    from msllama.kernels import KernelUnavailable, decode_layer, paged_attention, pointwise, small_matmul

    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        paged_attention.library()
        small_matmul.library()
        pointwise.library()
        decode_layer.library()
    except KernelUnavailable as e:
        pytest.skip(f"the kernels cannot be built here: {e}")
