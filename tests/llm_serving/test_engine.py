"""The engine thread against a real worker and agent: when a step's tokens reach the client."""
from __future__ import annotations

import asyncio
import threading

from llm_serving.config import load_serving_config
from llm_serving.engine import AsyncEngine
from llm_serving.messages import SamplingParams
from llm_serving.metrics import Metrics
from llm_serving.worker import Worker
from msllama.tokenizer import Tokenizer


class GatedWorker:
    """A real Worker whose answers after the first `free` steps wait until `gate` is set."""

    def __init__(self, worker: Worker, free: int):
        self.worker, self.free, self.steps, self.gate = worker, free, 0, threading.Event()

    def submit(self, step) -> None:
        self.steps += 1
        self.worker.submit(step)

    def collect(self):
        if self.steps > self.free:
            self.gate.wait(timeout=120)
        return self.worker.collect()

    def __getattr__(self, name):
        return getattr(self.worker, name)


def test_a_step_s_tokens_reach_the_client_while_the_next_step_runs(serving_yaml):
    # The engine sends step N, then hands step N-1's tokens to the HTTP side: a client must not
    # wait for step N to finish before it sees them (nor the HTTP side do its writing while the
    # engine thread prepares step N + 1).
    config = load_serving_config(serving_yaml("small"))
    with Worker(config) as real:
        real.start()
        gated = GatedWorker(real, free=1)   # the prefill step answers; the first decode step waits
        engine = AsyncEngine(config, gated, Tokenizer(config.tokenizer_path), Metrics())
        engine.start()

        async def first_token():
            handle = engine.submit([1, 450, 4996, 17354], SamplingParams(max_new_tokens=3, ignore_eos=True))
            return await asyncio.wait_for(handle.__anext__(), timeout=30)

        try:
            event = asyncio.run(first_token())
            assert event.index == 0 and event.finish_reason is None
            assert gated.steps == 2 and not gated.gate.is_set()     # the decode step is still unanswered
        finally:
            gated.gate.set()
            engine.shutdown(10.0)
