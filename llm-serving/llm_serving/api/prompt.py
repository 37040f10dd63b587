"""Prompt token ids and the prompt checks every route shares (the contest's Error202/Error203)."""
from __future__ import annotations

import asyncio
from typing import Callable, Sequence

from ..messages import ERROR_PROMPT_EMPTY, ERROR_PROMPT_RANGE
from .errors import ApiError, invalid

# Sentencepiece encodes ~1 MB/s of text per core: below this many characters encoding on the event
# loop costs less than a hop to a thread; above it the loop would stall for milliseconds.
LONG_TEXT_CHARS = 20_000


async def tokenize(encode: Callable[[], list[int]], chars: int) -> list[int]:
    """Run `encode` (which reads `chars` characters of text) without stalling the event loop."""
    if chars > LONG_TEXT_CHARS:
        return await asyncio.to_thread(encode)
    return encode()


def check_not_empty(prompt: str | Sequence[int], field: str) -> None:
    if len(prompt) == 0:
        raise ApiError(400, f"{ERROR_PROMPT_EMPTY}: '{field}' is empty", field=field,
                       rule="must be non-empty", code="prompt_empty")


def check_token_ids(ids: Sequence[int], vocab_size: int, field: str) -> None:
    """A prompt given as token ids (OpenAI completions): every id must be in the vocabulary."""
    check_not_empty(ids, field)
    for i, token in enumerate(ids):
        if not 0 <= token < vocab_size:
            raise invalid(f"{field}[{i}]", f"must satisfy 0 <= token id < {vocab_size}", got=token)


def check_length(prompt_tokens: int, max_new_tokens: int, max_length: int, prompt_field: str,
                 max_new_field: str) -> None:
    """prompt tokens + max_new_tokens must fit max_generate_length (the model's sequence budget)."""
    total = prompt_tokens + max_new_tokens
    if total <= max_length:
        return
    # Blame the prompt when it leaves no room for even one new token.
    field = prompt_field if prompt_tokens >= max_length else max_new_field
    raise ApiError(400, f"{ERROR_PROMPT_RANGE}: the prompt has {prompt_tokens} tokens and {max_new_field} is "
                        f"{max_new_tokens}: {total} > max_generate_length {max_length}",
                   field=field, rule=f"prompt tokens + {max_new_field} <= {max_length}", code="prompt_out_of_range")
