"""The whole server under load, over real HTTP on 127.0.0.1 (the session `server` fixture unless
a test needs its own config)."""
from __future__ import annotations

import asyncio
import json
import os
import time

import httpx
import numpy as np
import pytest
import requests

STREAM = "/models/llama2/generate_stream"
GENERATE = "/models/llama2/generate"


def metric(url: str, name: str) -> float:
    for line in requests.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"metric {name} not found")


def wait_idle(url: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metric(url, "llm_requests_running") == 0 and metric(url, "llm_requests_waiting") == 0:
            break
        time.sleep(0.1)
    assert metric(url, "llm_requests_running") == 0 and metric(url, "llm_requests_waiting") == 0
    assert metric(url, "llm_kv_blocks_used") == 0, "KV blocks leaked"


async def stream_all(url: str, bodies: list[dict]) -> list[list[dict]]:
    """Send every body at once to the streaming route; each answer's parsed lines."""
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=None)) as client:
        async def one(body: dict) -> list[dict]:
            async with client.stream("POST", url + STREAM, json=body) as resp:
                assert resp.status_code == 200, await resp.aread()
                return [json.loads(line) async for line in resp.aiter_lines() if line]
        return await asyncio.gather(*(one(b) for b in bodies))


def prompt(rng: np.random.Generator, words: int) -> str:
    vocab = ["alpha", "river", "stone", "light", "quiet", "seven", "green", "table", "north", "music"]
    return " ".join(rng.choice(vocab, size=words))


def offline_ids(tokenizer_path: str, prompts: list[str], lengths: list[int]) -> list[list[int]]:
    """Greedy tokens of msllama.generate for the tiny model (prompts prefilled together, then decoded)."""
    from msllama.config import load_predict_config
    from msllama.generate import generate
    from msllama.runner import Ladder, runner_from_config
    from msllama.tokenizer import Tokenizer

    pc = load_predict_config(os.path.join(os.path.dirname(tokenizer_path), "predict_tiny.yaml"))
    runner = runner_from_config(pc, Ladder(decode_batches=(8,), decode_blocks=(4,), prefill_tokens=(128,),
                                           prefill_context_factors=(1,)))
    runner.warmup()
    tok = Tokenizer(tokenizer_path)
    return generate(runner, [tok.encode(p) for p in prompts], lengths)


def test_greedy_text_over_http_equals_offline_generation(server):
    from msllama.tokenizer import Tokenizer

    rng = np.random.default_rng(0)
    prompts = [prompt(rng, n) for n in (3, 9, 1, 14, 6, 20, 2, 11)]
    lengths = [12, 30, 5, 21, 40, 8, 17, 25]
    bodies = [{"inputs": p, "parameters": {"max_new_tokens": n}} for p, n in zip(prompts, lengths)]
    answers = asyncio.run(stream_all(server.url, bodies))       # one batch: all in flight together
    http_ids = [[line["data"][0]["tokens"]["id"] for line in lines[:-1]] for lines in answers]
    http_text = [lines[-1]["data"][0]["generated_text"] for lines in answers]

    offline = offline_ids(server.tokenizer_path, prompts, lengths)
    assert http_ids == offline
    # the text continues the prompt: a first token "▁word" keeps its space
    tok = Tokenizer(server.tokenizer_path)
    prompt_ids = [tok.encode(p) for p in prompts]
    assert http_text == [tok.decode(p + g)[len(tok.decode(p)):] for p, g in zip(prompt_ids, offline)]


def test_mixed_steps_serve_the_same_greedy_tokens_and_free_every_block(serving_yaml, launch, tiny_model):
    server = launch(serving_yaml("mixed"), "--task", "1")
    url = server.wait_for(r"Serving \S+ at (\S+)").group(1)
    rng = np.random.default_rng(4)
    prompts = [prompt(rng, n) for n in (3, 9, 1, 14, 6, 20, 2, 11)]
    lengths = [12, 30, 5, 21, 40, 8, 17, 25]

    async def staggered() -> list[list[dict]]:
        # later requests arrive while earlier ones decode, so their prompts ride in mixed steps
        async def one(i: int) -> list[dict]:
            await asyncio.sleep(0.05 * i)
            return (await stream_all(url, [{"inputs": prompts[i], "parameters": {"max_new_tokens": lengths[i]}}]))[0]
        return await asyncio.gather(*(one(i) for i in range(len(prompts))))

    answers = asyncio.run(staggered())
    http_ids = [[line["data"][0]["tokens"]["id"] for line in lines[:-1]] for lines in answers]
    assert metric(url, 'llm_engine_steps_total{kind="mixed"}') > 0
    assert http_ids == offline_ids(os.path.join(tiny_model, "tokenizer.model"), prompts, lengths)
    wait_idle(url)


def test_64_concurrent_requests_of_mixed_lengths_complete_and_free_every_block(server):
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 60, size=64).tolist()
    bodies = [{"inputs": prompt(rng, int(rng.integers(1, 40))), "parameters": {"max_new_tokens": n}}
              for n in lengths]
    before = metric(server.url, "llm_generation_tokens_total")
    decode_tokens = 'llm_engine_step_tokens_total{kind="decode"}'
    decoded_before = metric(server.url, decode_tokens)
    answers = asyncio.run(stream_all(server.url, bodies))
    for lines, n in zip(answers, lengths):
        final = lines[-1]["data"][0]
        assert len(lines) == n + 1 and final["generated_tokens"] == n and final["finish_reason"] == "length"
        assert "".join(line["data"][0]["generated_text"] for line in lines[:-1]) == final["generated_text"]
    assert metric(server.url, "llm_generation_tokens_total") - before == sum(lengths)
    # the first token of each comes from its prefill step, every later one from a decode step
    assert metric(server.url, decode_tokens) - decoded_before == sum(lengths) - len(lengths)
    for phase in ("schedule", "prepare", "submit", "wait", "model", "update", "detokenize"):
        assert metric(server.url, f'llm_engine_phase_seconds_total{{kind="decode",phase="{phase}"}}') > 0
    wait_idle(server.url)


def test_disconnect_mid_stream_frees_the_request_s_blocks(server):
    body = {"inputs": "a long story about the river", "parameters": {"max_new_tokens": 200}}
    with requests.post(server.url + STREAM, json=body, stream=True, timeout=60) as resp:
        lines = resp.iter_lines()
        next(lines)
        assert metric(server.url, "llm_kv_blocks_used") > 0
    wait_idle(server.url)


def test_a_shared_prefix_is_served_from_the_cache(server):
    system = "You are a careful assistant. " * 12           # several full 16-token blocks
    hits = metric(server.url, "llm_prefix_cache_hit_tokens_total")
    for question in ("Name a river.", "Name a stone."):
        r = requests.post(server.url + GENERATE, json={"inputs": system + question,
                                                       "parameters": {"max_new_tokens": 3}}, timeout=60)
        assert r.status_code == 200, r.text
    assert metric(server.url, "llm_prefix_cache_hit_tokens_total") - hits >= 3 * 16
    wait_idle(server.url)


def test_a_full_queue_answers_503_and_the_server_keeps_serving(serving_yaml, launch):
    server = launch(serving_yaml("small", max_queue_size=2), "--task", "1")
    url = server.wait_for(r"Serving \S+ at (\S+)").group(1)

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=None)) as client:
            body = {"inputs": "tell me about the north", "parameters": {"max_new_tokens": 100}}
            return await asyncio.gather(*(client.post(url + GENERATE, json=body) for _ in range(24)))

    answers = asyncio.run(burst())
    rejected = [r for r in answers if r.status_code == 503]
    served = [r for r in answers if r.status_code == 200]
    assert rejected and served and len(rejected) + len(served) == 24
    assert all(r.headers.get("retry-after") for r in rejected)
    assert all(r.json()["generated_tokens"] == 100 for r in served)
    r = requests.post(url + GENERATE, json={"inputs": "and now?", "parameters": {"max_new_tokens": 4}}, timeout=60)
    assert r.status_code == 200 and r.json()["generated_tokens"] == 4
    wait_idle(url)
