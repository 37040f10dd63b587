"""The Llama-2 chat template as token ids: BOS/EOS ids around each exchange, system folded in."""
from __future__ import annotations

import os

import pytest

from llm_serving.api.chat import chat_prompt_ids
from llm_serving.api.errors import ApiError
from msllama.tokenizer import Tokenizer

CONTEST_TOKENIZER = "/work/shared/contest/tokenizer.model"


@pytest.fixture(scope="module")
def tok(tiny_model: str) -> Tokenizer:
    return Tokenizer(os.path.join(tiny_model, "tokenizer.model"))


def test_single_user_turn(tok: Tokenizer):
    ids = chat_prompt_ids([("user", "  What is 2+2? ")], tok)
    assert ids == [tok.bos_id] + tok.encode("[INST] What is 2+2? [/INST]", add_bos=False)


def test_system_and_multi_turn(tok: Tokenizer):
    messages = [("system", "Be brief."), ("user", "Hi"), ("assistant", " Hello! "), ("user", "Bye")]
    first = "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello! "
    expected = ([tok.bos_id] + tok.encode(first, add_bos=False) + [tok.eos_id]
                + [tok.bos_id] + tok.encode("[INST] Bye [/INST]", add_bos=False))
    assert chat_prompt_ids(messages, tok) == expected


def test_bos_and_eos_are_ids_never_text(tok: Tokenizer):
    messages = [("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d"), ("user", "e")]
    ids = chat_prompt_ids(messages, tok)
    assert ids.count(tok.bos_id) == 3 and ids.count(tok.eos_id) == 2
    assert ids[0] == tok.bos_id and ids[-1] != tok.eos_id
    assert "<s>" not in tok.decode(ids) and "</s>" not in tok.decode(ids)


@pytest.mark.parametrize("messages, field", [
    ([("assistant", "x"), ("user", "y")], "messages[0].role"),
    ([("user", "x"), ("user", "y")], "messages[1].role"),
    ([("system", "s"), ("assistant", "x")], "messages[1].role"),
    ([("user", "x"), ("system", "y"), ("user", "z")], "messages[1].role"),
    ([("user", "x"), ("assistant", "y")], "messages[1].role"),
    ([("system", "s")], "messages[0].role"),
    ([], "messages"),
])
def test_bad_role_order_is_a_400_naming_the_message(tok: Tokenizer, messages: list, field: str):
    with pytest.raises(ApiError) as info:
        chat_prompt_ids(messages, tok)
    assert info.value.status == 400 and info.value.field == field and info.value.rule


def test_llama2_tokenizer_gives_the_reference_ids():
    if not os.path.isfile(CONTEST_TOKENIZER):
        pytest.skip(f"{CONTEST_TOKENIZER} is absent")
    tok = Tokenizer(CONTEST_TOKENIZER)
    ids = chat_prompt_ids([("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello!"), ("user", "Bye")], tok)
    assert ids == [
        1, 518, 25580, 29962, 3532, 14816, 29903, 6778, 13,    # <s> ▁[ INST ] ▁<< SY S >> \n
        3629, 11473, 29889, 13,                                 # Be ▁brief . \n
        29966, 829, 14816, 29903, 6778, 13, 13,                 # < </ SY S >> \n \n
        18567, 518, 29914, 25580, 29962,                        # Hi ▁[ / INST ]
        15043, 29991, 29871, 2,                                 # ▁Hello ! ▁ </s>
        1, 518, 25580, 29962, 2648, 29872, 518, 29914, 25580, 29962,   # <s> ▁[ INST ] ▁By e ▁[ / INST ]
    ]
