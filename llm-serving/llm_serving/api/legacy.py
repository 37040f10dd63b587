"""The contest kit's routes, byte-compatible (PROTOCOL.md §1).

Stream: one compact JSON line per generated token, then (return_full_text) one line holding the
full response; no `data:` prefix, no blank or keep-alive lines. A token object's "logprob" holds
the raw logit of the chosen token, as in the original. With stop strings, a line's
"generated_text" is the text released by that token (possibly "") while its token object keeps
the token's own text.
"""
from __future__ import annotations

from typing import Any, AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ..messages import TokenEvent
from .jsonio import dumps, parse_body
from .generation import FAILED, Delta, HandleStream, collect_or_abort, deltas, submit
from .prompt import check_length, check_not_empty, tokenize
from .schemas import LegacyRequest

BASE = "/models/llama2"
RETRY_MS = 30000

router = APIRouter()


def token_object(event: TokenEvent, special: bool) -> dict[str, Any]:
    # `special` also while the text is "" (an incomplete multi-byte character), as in the original.
    return {"id": event.token_id, "logprob": event.logit, "special": special or event.text == "",
            "text": event.text}


def token_line(generated_text: str, token: dict[str, Any]) -> str:
    item = {"details": None, "generated_text": generated_text, "tokens": token, "top_tokens": [token]}
    return dumps({"event": "message", "retry": RETRY_MS, "data": [item]}) + "\n"


def full_response(text: str, finish_reason: str, tokens: list[dict[str, Any]], seed: int) -> dict[str, Any]:
    return {"generated_text": text, "finish_reason": finish_reason, "generated_tokens": len(tokens),
            "prefill": tokens[:1], "seed": seed, "tokens": tokens, "top_tokens": [tokens[:1]], "details": None}


def full_line(response: dict[str, Any]) -> str:
    return dumps({"event": "message", "retry": RETRY_MS, "data": [response]}) + "\n"


def error_line(message: str) -> str:
    """Ends a failed stream; a judge reading data[0]["generated_text"] of every line keeps going."""
    item = {"details": None, "generated_text": "", "error": message}
    return dumps({"event": "error", "retry": RETRY_MS, "data": [item]}) + "\n"


def _token(d: Delta, tokenizer: Any) -> dict[str, Any]:
    return token_object(d.event, tokenizer.is_special(d.event.token_id))


async def _lines(handle: Any, req: LegacyRequest, tokenizer: Any) -> AsyncIterator[str]:
    params = req.parameters
    tokens: list[dict[str, Any]] = []
    text = ""
    async for d in deltas(handle, params.stop):
        if d.finish_reason in FAILED:
            yield error_line(d.failure().message)
            return
        if d.has_token:
            tokens.append(_token(d, tokenizer))
            text += d.text
            yield token_line(d.text, tokens[-1])
        if d.finish_reason is not None and params.return_full_text:
            yield full_line(full_response(text, d.finish_reason, tokens, params.seed))


async def _generate(request: Request, stream: bool | None) -> Response:
    """`stream` None: the body's "stream" field decides."""
    engine = request.app.state.engine
    req = await parse_body(request, LegacyRequest, engine)
    check_not_empty(req.inputs, "inputs")
    ids = await tokenize(lambda: engine.tokenizer.encode(req.inputs), len(req.inputs))
    params = req.parameters
    check_length(len(ids), params.max_new_tokens, engine.config.max_generate_length,
                 "inputs", "parameters.max_new_tokens")
    handle = submit(engine, ids, params.sampling_params())
    if stream if stream is not None else req.stream:
        return HandleStream(_lines(handle, req, engine.tokenizer), handle, "application/x-ndjson")
    outcome = await collect_or_abort(request.receive, handle, params.stop)
    if outcome is None:     # the client left: nobody reads this
        return Response(status_code=499)
    tokens = [_token(d, engine.tokenizer) for d in outcome.deltas if d.has_token]
    return JSONResponse(full_response(outcome.text, outcome.finish_reason, tokens, params.seed))


@router.post(BASE + "/generate")
async def generate(request: Request) -> Response:
    return await _generate(request, stream=False)


@router.post(BASE + "/generate_stream")
async def generate_stream(request: Request) -> Response:
    return await _generate(request, stream=True)


@router.post(BASE)
async def generate_either(request: Request) -> Response:
    return await _generate(request, stream=None)
