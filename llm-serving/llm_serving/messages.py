"""What flows between the HTTP layer and the engine: request parameters and token events."""
from __future__ import annotations

from dataclasses import dataclass

# The contest kit's error texts; users grep logs for them, so ours contain them verbatim.
ERROR_PROMPT_RANGE = "Error202: prompt out of range"
ERROR_PROMPT_EMPTY = "Error203: prompt token empty"
ERROR_ABNORMAL_STOP = "error304: generation task stop abnormally!, please retry!"


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int
    temperature: float = 0.0        # 0 = greedy
    top_k: int = 0                  # 0 = off
    top_p: float = 1.0              # 1 = off
    repetition_penalty: float = 1.0
    seed: int = 0
    ignore_eos: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class TokenEvent:
    """One generated token, or the end of a request.

    `text` is this token's incremental text ("" while a multi-byte character is incomplete).
    `logit` is the raw logit of the chosen token (the legacy API's "logprob" field holds it).
    The last event of a request has `finish_reason` set: "eos", "length", "abort" or "error"
    (then `error` says why and `token_id` is -1 when no token came with it).
    """
    token_id: int
    logit: float
    text: str
    index: int                      # 0-based position among the generated tokens
    finish_reason: str | None = None
    error: str | None = None


class QueueFullError(RuntimeError):
    """The waiting queue is at its bound: answer 503 with Retry-After."""


class EngineDeadError(RuntimeError):
    """The engine cannot serve (an agent died or shutdown began): answer 503."""
