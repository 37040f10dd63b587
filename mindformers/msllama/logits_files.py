"""Task-2 logits files: which positions are saved and how files are named.

Shared by the server (which saves rows while serving) and the reference builder of
`file_npy_base/`, so both sides agree without timestamps: a file is `<key>_<p>.npy` where the key
identifies the prompt's token ids and p is the 0-based position of the input token whose
next-token logits the file holds.
"""
from __future__ import annotations

import hashlib
import os

import numpy as np

SAVE_EVERY = 100


def prompt_key(prompt_ids: list[int]) -> str:
    """First 20 digits of the ids (as the contest kit named files) + a hash of all of them, so
    prompts that start alike never collide. No '_' inside: the position follows the last '_'."""
    digits = "".join(str(t) for t in prompt_ids)[:20]
    digest = hashlib.sha1(",".join(map(str, prompt_ids)).encode()).hexdigest()[:12]
    return f"{digits}-{digest}"


def file_name(prompt_ids: list[int], position: int) -> str:
    return f"{prompt_key(prompt_ids)}_{position}.npy"


def saved_positions(num_prompt: int, num_generated: int, every: int = SAVE_EVERY) -> range:
    """Positions p > 0 with p % every == 0 among the tokens fed to the model: the prompt and every
    generated token but the last (which is returned, never fed back)."""
    return range(every, num_prompt + num_generated - 1, every)


def save_row(folder: str, prompt_ids: list[int], position: int, row: np.ndarray) -> str:
    path = os.path.join(folder, file_name(prompt_ids, position))
    np.save(path, np.asarray(row, dtype=np.float32))
    return path
