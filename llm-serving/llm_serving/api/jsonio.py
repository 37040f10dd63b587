"""JSON in and out: request bodies (size-limited while they arrive, parsed whatever the
Content-Type says: curl -d sends form encoding; validated into a schema with the served model's
limits) and the compact encoding of streamed lines and chunks."""
from __future__ import annotations

import json
from typing import Any, Type, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from .errors import ApiError, from_validation_error, invalid

M = TypeVar("M", bound=BaseModel)


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"the request body exceeds {limit} bytes (serving_config.max_body_bytes)",
                    field="body", rule=f"at most {limit} bytes", code="body_too_large")


async def read_json(request: Request, limit: int) -> Any:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    # Counted as it arrives: a chunked upload has no Content-Length to check up front.
    parts: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        parts.append(chunk)
    try:
        return json.loads(b"".join(parts))
    except ValueError as exc:      # also UnicodeDecodeError
        raise invalid("body", "must be a JSON object", message=f"body: malformed JSON ({exc})") from None


async def parse_body(request: Request, model: Type[M], engine: Any) -> M:
    data = await read_json(request, engine.config.max_body_bytes)
    try:
        return model.model_validate(data, context={"vocab_size": engine.tokenizer.vocab_size})
    except ValidationError as exc:
        raise from_validation_error(exc) from None
