"""OpenAI-compatible routes: /v1/completions, /v1/chat/completions, /v1/models.

Streams are server-sent events, `data: {json}\\n\\n` chunks ending with `data: [DONE]\\n\\n`. Chunks
carry only new text (stop strings are held back until they are ruled out) and the last one the
finish reason; with stream_options.include_usage every chunk has "usage": null and a final chunk
with no choices carries the counts. Token counts include the EOS token when one was generated.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Union

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from .chat import chat_prompt_ids
from .errors import ApiError
from .generation import FAILED, HandleStream, collect_or_abort, deltas, submit
from .jsonio import dumps, parse_body
from .prompt import check_length, check_not_empty, check_token_ids, tokenize
from .schemas import ChatCompletionRequest, CompletionRequest

# Engine finish reasons -> OpenAI's ("stop" covers EOS and stop strings).
FINISH = {"eos": "stop", "stop": "stop", "length": "length"}
DONE = "data: [DONE]\n\n"
OWNER = "llm-serving"

router = APIRouter(prefix="/v1")
Req = Union[CompletionRequest, ChatCompletionRequest]


@dataclass(frozen=True)
class Meta:
    """What every chunk or response of one request repeats."""
    id: str
    created: int
    model: str
    chat: bool

    def envelope(self, stream: bool, choices: list[dict[str, Any]]) -> dict[str, Any]:
        kind = ("chat.completion" if self.chat else "text_completion") + (".chunk" if self.chat and stream else "")
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": choices}

    def stream_choice(self, text: str, finish_reason: str | None) -> dict[str, Any]:
        if self.chat:
            delta = {"content": text} if text else {}
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}

    def full_choice(self, text: str, finish_reason: str | None) -> dict[str, Any]:
        if self.chat:
            return {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                    "finish_reason": finish_reason}
        return self.stream_choice(text, finish_reason)


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def sse(obj: Any) -> str:
    return f"data: {dumps(obj)}\n\n"


async def _events(handle: Any, req: Req, meta: Meta, prompt_tokens: int) -> AsyncIterator[str]:
    include_usage = req.include_usage

    def chunk(choices: list[dict[str, Any]], counts: dict[str, int] | None = None) -> str:
        body = meta.envelope(True, choices)
        if include_usage:
            body["usage"] = counts
        return sse(body)

    if meta.chat:
        yield chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                      "finish_reason": None}])
    generated = 0
    async for d in deltas(handle, req.stop):
        if d.finish_reason in FAILED:
            yield sse(d.failure().openai_body())
            yield DONE
            return
        generated += d.has_token
        if d.text or d.finish_reason:
            yield chunk([meta.stream_choice(d.text, FINISH.get(d.finish_reason or ""))])
    if include_usage:
        yield chunk([], usage(prompt_tokens, generated))
    yield DONE


def _check_model(model: str, engine: Any) -> None:
    served = engine.config.model_name
    if model != served:
        raise ApiError(404, f"The model '{model}' does not exist: this server serves '{served}'",
                       field="model", rule=f"must be '{served}'", code="model_not_found")


async def _respond(request: Request, engine: Any, req: Req, ids: list[int], chat: bool, prompt_field: str,
                   max_field: str) -> Response:
    check_length(len(ids), req.max_new_tokens, engine.config.max_generate_length, prompt_field, max_field)
    handle = submit(engine, ids, req.sampling_params())
    meta = Meta(f"{'chatcmpl' if chat else 'cmpl'}-{handle.request_id}", int(time.time()), req.model, chat)
    if req.stream:
        return HandleStream(_events(handle, req, meta, len(ids)), handle, "text/event-stream")
    outcome = await collect_or_abort(request.receive, handle, req.stop)
    if outcome is None:     # the client left: nobody reads this
        return Response(status_code=499)
    body = meta.envelope(False, [meta.full_choice(outcome.text, FINISH.get(outcome.finish_reason))])
    body["usage"] = usage(len(ids), outcome.generated_tokens)
    return JSONResponse(body)


@router.post("/completions")
async def completions(request: Request) -> Response:
    engine = request.app.state.engine
    req = await parse_body(request, CompletionRequest, engine)
    _check_model(req.model, engine)
    prompt = req.prompt
    if isinstance(prompt, str):
        check_not_empty(prompt, "prompt")
        ids = await tokenize(lambda: engine.tokenizer.encode(prompt), len(prompt))
    else:       # token ids, used as given (no BOS added)
        check_token_ids(prompt, engine.tokenizer.vocab_size, "prompt")
        ids = list(prompt)
    return await _respond(request, engine, req, ids, False, "prompt", "max_tokens")


@router.post("/chat/completions")
async def chat_completions(request: Request) -> Response:
    engine = request.app.state.engine
    req = await parse_body(request, ChatCompletionRequest, engine)
    _check_model(req.model, engine)
    messages = [(m.role, m.content) for m in req.messages]
    ids = await tokenize(lambda: chat_prompt_ids(messages, engine.tokenizer), sum(len(c) for _, c in messages))
    max_field = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    return await _respond(request, engine, req, ids, True, "messages", max_field)


@router.get("/models")
async def models(request: Request) -> dict[str, Any]:
    engine = request.app.state.engine
    return {"object": "list", "data": [{"id": engine.config.model_name, "object": "model",
                                        "created": request.app.state.started, "owned_by": OWNER}]}
