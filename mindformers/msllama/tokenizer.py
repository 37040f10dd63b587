"""Sentencepiece tokenizer with the contest's BOS handling, and an incremental detokeniser.

The contest's mindformers LlamaTokenizer puts BOS (id 1) in front of every encoded prompt and no
EOS; Llama-2 has no pad piece, so pad is id 0 (`<unk>`), as in the contest's `pad_token`.
"""
from __future__ import annotations

import os
from typing import Sequence

import sentencepiece as spm


class Tokenizer:
    """A sentencepiece `tokenizer.model` (Llama-2's or the debug one from `debug_data`)."""

    def __init__(self, path: str) -> None:
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"tokenizer model {path!r}: no such file")
        self.path = path
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.Load(path)
        except (RuntimeError, OSError) as exc:
            raise ValueError(f"tokenizer model {path!r}: not a sentencepiece model ({exc})") from None
        for name in ("bos", "eos"):
            if getattr(self._sp, f"{name}_id")() < 0:
                raise ValueError(f"tokenizer model {path!r}: has no {name.upper()} piece")
        sp = self._sp
        self._special = frozenset(i for i in range(sp.vocab_size()) if sp.IsControl(i) or sp.IsUnknown(i))

    @property
    def bos_id(self) -> int:
        return self._sp.bos_id()

    @property
    def eos_id(self) -> int:
        return self._sp.eos_id()

    @property
    def pad_id(self) -> int:
        # Llama has no pad piece; the contest pads with '<unk>'.
        return self._sp.pad_id() if self._sp.pad_id() >= 0 else self._sp.unk_id()

    @property
    def vocab_size(self) -> int:
        return self._sp.vocab_size()

    def is_special(self, token_id: int) -> bool:
        """True for control pieces (BOS, EOS) and `<unk>` (= pad): text never shows them."""
        self._check_id(token_id)
        return token_id in self._special

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        ids = self._sp.EncodeAsIds(text)
        return [self.bos_id] + ids if add_bos else ids

    def piece_count(self, text: str) -> int:
        """Number of sentencepiece pieces without BOS: the judge's `len(tokenizer.tokenize(text))`."""
        return len(self.encode(text, add_bos=False))

    def decode(self, ids: Sequence[int]) -> str:
        for i in ids:
            self._check_id(i)
        return self._sp.DecodeIds([int(i) for i in ids if i not in self._special])

    def _check_id(self, token_id: int) -> None:
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(f"token id {token_id} is out of range: must be in [0, {self.vocab_size})")


class IncrementalDetokenizer:
    """Turns generated token ids into text one token at a time.

    Each `push` decodes a short window (the last emitted tokens plus the new ones) and returns what
    the new token adds to the window's text: decoding in context keeps sentencepiece's leading
    spaces right, and the window keeps the cost per token independent of the sequence length.
    Text ending in U+FFFD (an incomplete UTF-8 character from byte-fallback pieces) is held back
    until a later token completes it or `finish` flushes it.
    """

    # Prompt tokens decoded in front of the first generated one so that "▁Hello" yields " Hello".
    CONTEXT_TOKENS = 5

    def __init__(self, tokenizer: Tokenizer, prompt_ids: Sequence[int]) -> None:
        self._tok = tokenizer
        ids = [i for i in prompt_ids if not tokenizer.is_special(i)]
        self._ids = ids[max(0, len(ids) - self.CONTEXT_TOKENS):]
        self._read = len(self._ids)      # ids[:_read] are already turned into text
        self._prefix_text = tokenizer.decode(self._ids)
        self._parts: list[str] = []

    @property
    def text(self) -> str:
        """All text returned so far."""
        return "".join(self._parts)

    def push(self, token_id: int) -> str:
        """The text that `token_id` completes ("" for special tokens and incomplete characters)."""
        if self._tok.is_special(token_id):
            return ""
        self._ids.append(token_id)
        window_text = self._tok.decode(self._ids)
        if len(window_text) <= len(self._prefix_text) or window_text.endswith("\ufffd"):
            return ""
        return self._emit(window_text)

    def finish(self) -> str:
        """Flushes held-back text (an incomplete trailing character becomes U+FFFD)."""
        window_text = self._tok.decode(self._ids)
        if len(window_text) <= len(self._prefix_text):
            return ""
        return self._emit(window_text)

    def _emit(self, window_text: str) -> str:
        new = window_text[len(self._prefix_text):]
        # The tokens just turned into text become the context of the next window.
        del self._ids[:self._read]
        self._read = len(self._ids)
        self._prefix_text = self._tok.decode(self._ids)
        self._parts.append(new)
        return new
