"""The Llama-2 chat template, built as token ids.

    [BOS] [INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user 1} [/INST] {assistant 1} [EOS]
    [BOS] [INST] {user 2} [/INST] {assistant 2} [EOS]
    ...
    [BOS] [INST] {last user} [/INST]

BOS and EOS are token ids around each exchange, never the text "<s>"/"</s>" (which a tokenizer
would split into ordinary pieces). The optional system message is folded into the first user
turn. Contents are stripped of surrounding whitespace, as in Meta's reference code.
"""
from __future__ import annotations

from typing import Sequence, Tuple

from msllama.tokenizer import Tokenizer

from .errors import invalid

INST_OPEN, INST_CLOSE = "[INST]", "[/INST]"
SYS_OPEN, SYS_CLOSE = "<<SYS>>\n", "\n<</SYS>>\n\n"

Message = Tuple[str, str]       # (role, content)


def chat_prompt_ids(messages: Sequence[Message], tokenizer: Tokenizer) -> list[int]:
    """Token ids of the conversation, ending where the assistant's next answer starts."""
    turns = [content for _, content in _checked(messages)]
    if messages[0][0] == "system":
        system = turns.pop(0)
        turns[0] = SYS_OPEN + system + SYS_CLOSE + turns[0]
    ids: list[int] = []
    for i in range(0, len(turns) - 1, 2):
        text = f"{INST_OPEN} {turns[i].strip()} {INST_CLOSE} {turns[i + 1].strip()} "
        ids += tokenizer.encode(text) + [tokenizer.eos_id]
    ids += tokenizer.encode(f"{INST_OPEN} {turns[-1].strip()} {INST_CLOSE}")
    return ids


def _checked(messages: Sequence[Message]) -> Sequence[Message]:
    """Roles must be: an optional system message, then user/assistant alternating, ending with user."""
    if not messages:
        raise invalid("messages", "must hold at least one message")
    start = 1 if messages[0][0] == "system" else 0
    for i, (role, _) in enumerate(messages):
        expected = "user" if (i - start) % 2 == 0 else "assistant"
        if i >= start and role != expected:
            raise invalid(f"messages[{i}].role", f"must be '{expected}': an optional system message first, then "
                          "user and assistant alternating, ending with user", got=role)
    if len(messages) == start or messages[-1][0] != "user":
        raise invalid(f"messages[{len(messages) - 1}].role", "the last message must be from the user",
                      got=messages[-1][0])
    return messages
