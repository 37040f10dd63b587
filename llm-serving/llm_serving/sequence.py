"""A request's state inside the engine."""
from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from .messages import SamplingParams


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    """Prompt + generated tokens and how far the KV cache has got.

    `num_computed` tokens have their K/V in the cache; the next step feeds
    `token_ids[num_computed:]` (the prompt, a chunk of it, or the last generated token). After a
    preemption `num_computed` drops to 0 and the whole sequence is recomputed.
    """
    seq_id: int
    request_id: str
    token_ids: list[int]
    num_prompt: int
    params: SamplingParams
    arrival: float = field(default_factory=time.monotonic)
    status: Status = Status.WAITING
    num_computed: int = 0
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[int] = field(default_factory=list)   # chained hashes of full blocks
    first_token_time: float = 0.0
    last_token_time: float = 0.0
    saved_positions: set[int] = field(default_factory=set)  # task 2: logits rows written
    finish_reason: str | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_generated(self) -> int:
        return len(self.token_ids) - self.num_prompt

    @property
    def num_uncomputed(self) -> int:
        return len(self.token_ids) - self.num_computed

    @property
    def in_decode(self) -> bool:
        """Only the last sampled token is missing from the cache."""
        return self.num_uncomputed == 1 and self.num_generated > 0
