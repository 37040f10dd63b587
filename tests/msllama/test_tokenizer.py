from __future__ import annotations

import numpy as np
import pytest

from msllama.tokenizer import IncrementalDetokenizer, Tokenizer

TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "中文分词测试，你好世界。",
    "Emoji: 😀🚀 and a family 👨‍👩‍👧 here",
    "Café crème, naïve façade, Übermaß, señor",
    "Call 555-0199 or pay $1,234.56 by 2024-01-31",
    " leading space",
    "   three leading, and  two   inner spaces  ",
    "tabs\tand\nnew\nlines\n\n",
]


def _pieces(det: IncrementalDetokenizer, ids: list[int]) -> list[str]:
    return [det.push(i) for i in ids] + [det.finish()]


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(debug_tokenizer: Tokenizer, text: str) -> None:
    ids = debug_tokenizer.encode(text)
    assert ids[0] == debug_tokenizer.bos_id and debug_tokenizer.eos_id not in ids
    assert debug_tokenizer.decode(ids) == text
    assert debug_tokenizer.encode(text, add_bos=False) == ids[1:]
    assert debug_tokenizer.piece_count(text) == len(ids) - 1


def test_special_ids(debug_tokenizer: Tokenizer) -> None:
    tok = debug_tokenizer
    assert (tok.vocab_size, tok.pad_id, tok.bos_id, tok.eos_id) == (32000, 0, 1, 2)
    assert [tok.is_special(i) for i in range(5)] == [True, True, True, False, False]
    ids = tok.encode("some text", add_bos=False)
    assert tok.decode([1, 0, *ids, 2, 0]) == tok.decode(ids) == "some text"
    assert tok.piece_count("") == 0 and tok.encode("") == [1]


def test_bad_input(debug_tokenizer: Tokenizer, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere/tokenizer.model"):
        Tokenizer(str(tmp_path / "nowhere/tokenizer.model"))
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="junk.model.*not a sentencepiece model"):
        Tokenizer(str(junk))
    with pytest.raises(ValueError, match=r"token id 32000 is out of range"):
        debug_tokenizer.decode([5, 32000])
    with pytest.raises(TypeError, match="text must be a str"):
        debug_tokenizer.encode(b"bytes")  # type: ignore[arg-type]


def test_first_token_keeps_its_leading_space(debug_tokenizer: Tokenizer) -> None:
    tok = debug_tokenizer
    word = tok.encode("the", add_bos=False)
    assert len(word) == 1
    det = IncrementalDetokenizer(tok, tok.encode("Tell me"))
    assert det.push(word[0]) == " the"
    # Without a prompt the text starts with the word itself.
    assert IncrementalDetokenizer(tok, [tok.bos_id]).push(word[0]) == "the"


@pytest.mark.parametrize("text", TEXTS)
def test_incremental_equals_decode(debug_tokenizer: Tokenizer, text: str) -> None:
    tok = debug_tokenizer
    ids = tok.encode(text, add_bos=False)
    det = IncrementalDetokenizer(tok, [tok.bos_id])
    pieces = _pieces(det, ids + [tok.eos_id])
    assert "".join(pieces) == det.text == tok.decode(ids) == text
    # Complete text never shows a half character, and each piece is emitted once it is complete.
    assert not any("\ufffd" in p for p in pieces)
    assert pieces[-1] == ""


@pytest.mark.parametrize("text", TEXTS)
def test_incremental_after_prompt_ending_mid_word(debug_tokenizer: Tokenizer, text: str) -> None:
    tok = debug_tokenizer
    ids = tok.encode("Answer:" + text + " and more words follow here")
    for cut in range(2, len(ids) - 1):
        prompt, generated = ids[:cut], ids[cut:]
        det = IncrementalDetokenizer(tok, prompt)
        pieces = _pieces(det, generated)
        assert "".join(pieces) == tok.decode(ids)[len(tok.decode(prompt)):]
        assert not any("\ufffd" in p for p in pieces)


def test_incremental_random_ids(debug_tokenizer: Tokenizer) -> None:
    """Arbitrary id sequences (many byte pieces, invalid UTF-8, specials) still add up."""
    tok = debug_tokenizer
    rng = np.random.default_rng(0)
    byte_ids = np.arange(3, 259)
    for trial in range(300):
        n = int(rng.integers(1, 40))
        ids = rng.integers(0, tok.vocab_size, size=n)
        from_bytes = rng.random(n) < 0.5
        ids[from_bytes] = rng.choice(byte_ids, size=int(from_bytes.sum()))
        ids = [int(i) for i in ids]
        prompt = tok.encode(["", "Question", "中文", "x y"][trial % 4])
        det = IncrementalDetokenizer(tok, prompt)
        pieces = _pieces(det, ids)
        assert "".join(pieces) == det.text == tok.decode(prompt + ids)[len(tok.decode(prompt)):]
        if len(prompt) == 1:
            assert det.text == tok.decode(ids)


def test_incomplete_character_is_held_then_flushed(debug_tokenizer: Tokenizer) -> None:
    tok = debug_tokenizer
    euro = [3 + b for b in "€".encode()]
    det = IncrementalDetokenizer(tok, [tok.bos_id])
    assert [det.push(i) for i in euro] == ["", "", "€"]
    assert [det.push(i) for i in euro[:2]] == ["", ""]
    assert det.finish() == "\ufffd" * len(tok.decode(euro[:2]))
    assert det.text == tok.decode(euro + euro[:2])


def test_contest_tokenizer(contest_file) -> None:
    tok = Tokenizer(contest_file("tokenizer.model"))
    assert tok.encode("Hello world") == [1, 15043, 3186]
    assert (tok.vocab_size, tok.pad_id, tok.bos_id, tok.eos_id) == (32000, 0, 1, 2)
    det = IncrementalDetokenizer(tok, tok.encode("Say hi:"))
    assert det.push(15043) == " Hello"
    for text in TEXTS:
        assert tok.decode(tok.encode(text)) == text
