"""Wire formats, byte for byte: legacy JSON lines (PROTOCOL.md §1) and OpenAI SSE chunks."""
from __future__ import annotations

import json

from llm_serving.api import legacy
from llm_serving.api.openai import DONE, Meta, sse, usage
from llm_serving.messages import ERROR_ABNORMAL_STOP, TokenEvent


def test_legacy_token_line_is_byte_exact():
    token = legacy.token_object(TokenEvent(15043, 12.5, " Hello", 0), special=False)
    line = legacy.token_line(" Hello", token)
    assert line == ('{"event":"message","retry":30000,"data":[{"details":null,"generated_text":" Hello",'
                    '"tokens":{"id":15043,"logprob":12.5,"special":false,"text":" Hello"},'
                    '"top_tokens":[{"id":15043,"logprob":12.5,"special":false,"text":" Hello"}]}]}\n')


def test_special_is_true_for_special_tokens_and_for_incomplete_characters():
    eos = legacy.token_object(TokenEvent(2, -1.25, "", 7, "eos"), special=True)
    assert eos == {"id": 2, "logprob": -1.25, "special": True, "text": ""}
    partial = legacy.token_object(TokenEvent(232, 3.0, "", 1), special=False)   # first byte of "é"
    assert partial["special"] is True
    assert legacy.token_line("", partial) == (
        '{"event":"message","retry":30000,"data":[{"details":null,"generated_text":"",'
        '"tokens":{"id":232,"logprob":3.0,"special":true,"text":""},'
        '"top_tokens":[{"id":232,"logprob":3.0,"special":true,"text":""}]}]}\n')


def test_non_ascii_text_is_sent_as_utf8_not_escaped():
    token = legacy.token_object(TokenEvent(30, 0.5, "中é", 0), special=False)
    line = legacy.token_line("中é", token)
    assert '"generated_text":"中é"' in line and "\\u" not in line


def test_full_response_line_and_generate_body():
    t1 = legacy.token_object(TokenEvent(10, 1.5, " a", 0), special=False)
    t2 = legacy.token_object(TokenEvent(2, 0.25, "", 1, "eos"), special=True)
    full = legacy.full_response(" a", "eos", [t1, t2], seed=0)
    assert legacy.full_line(full) == (
        '{"event":"message","retry":30000,"data":[{"generated_text":" a","finish_reason":"eos",'
        '"generated_tokens":2,"prefill":[{"id":10,"logprob":1.5,"special":false,"text":" a"}],"seed":0,'
        '"tokens":[{"id":10,"logprob":1.5,"special":false,"text":" a"},'
        '{"id":2,"logprob":0.25,"special":true,"text":""}],'
        '"top_tokens":[[{"id":10,"logprob":1.5,"special":false,"text":" a"}]],"details":null}]}\n')


def test_judge_reading_of_a_legacy_stream():
    """The contest judge: json.loads(line)["data"][0]["generated_text"] on every non-empty line,
    the last line being the full text; an error line keeps that reading working."""
    events = [TokenEvent(10, 1.0, "Hi", 0), TokenEvent(11, 1.0, " there", 1), TokenEvent(2, 1.0, "", 2, "eos")]
    tokens = [legacy.token_object(e, special=e.token_id == 2) for e in events]
    stream = "".join(legacy.token_line(e.text, t) for e, t in zip(events, tokens))
    stream += legacy.full_line(legacy.full_response("Hi there", "eos", tokens, seed=0))
    lines = [line for line in stream.split("\n") if line]
    texts = [json.loads(line)["data"][0]["generated_text"] for line in lines]
    assert texts == ["Hi", " there", "", "Hi there"]
    failed = legacy.error_line(ERROR_ABNORMAL_STOP)
    assert failed.endswith("\n") and failed.count("\n") == 1
    obj = json.loads(failed)
    assert obj["event"] == "error" and obj["data"][0]["generated_text"] == ""
    assert obj["data"][0]["error"] == ERROR_ABNORMAL_STOP


def test_completion_chunk_is_byte_exact():
    meta = Meta("cmpl-7", 1700000000, "llama2", chat=False)
    chunk = sse(meta.envelope(True, [meta.stream_choice(" Hello", None)]))
    assert chunk == ('data: {"id":"cmpl-7","object":"text_completion","created":1700000000,"model":"llama2",'
                     '"choices":[{"index":0,"text":" Hello","logprobs":null,"finish_reason":null}]}\n\n')
    assert DONE == "data: [DONE]\n\n"


def test_chat_chunks_and_full_response():
    meta = Meta("chatcmpl-7", 1700000000, "llama2", chat=True)
    last = meta.envelope(True, [meta.stream_choice("", "stop")])
    assert last["object"] == "chat.completion.chunk"
    assert last["choices"] == [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]
    assert meta.stream_choice("Hi", None)["delta"] == {"content": "Hi"}
    full = meta.envelope(False, [meta.full_choice("Hi", "length")])
    assert full["object"] == "chat.completion"
    assert full["choices"][0]["message"] == {"role": "assistant", "content": "Hi"}
    assert usage(5, 3) == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
