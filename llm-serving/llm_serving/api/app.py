"""The FastAPI application: legacy and OpenAI-compatible routes, /health, /metrics, errors, auth.

`create_app(engine)` reads everything it needs from the engine: `config` (ServingConfig),
`tokenizer`, `metrics`, `submit`, `healthy` and `failure`. Handlers only tokenise, submit and
await the request's events: no model work ever runs on the event loop.
"""
from __future__ import annotations

import hmac
import logging
import time
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import legacy, openai
from .errors import ApiError

log = logging.getLogger("llm_serving.api")

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


def _authorize(request: Request) -> None:
    """With serving_config.api_key set, every route but /health needs `Authorization: Bearer <key>`."""
    key = request.app.state.engine.config.api_key
    if not key:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
        raise ApiError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                       field="Authorization", rule="Bearer <serving_config.api_key>", code="invalid_api_key",
                       headers={"WWW-Authenticate": "Bearer"})


def _error_response(request: Request, err: ApiError) -> JSONResponse:
    return JSONResponse(err.body_for(request.url.path), status_code=err.status, headers=err.headers)


async def _on_api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return _error_response(request, exc)


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    """Unknown routes and wrong methods, in the same JSON shapes as every other error."""
    assert isinstance(exc, StarletteHTTPException)
    return _error_response(request, ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                                             code="not_found" if exc.status_code == 404 else None,
                                             headers=getattr(exc, "headers", None)))


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error in %s %s", request.method, request.url.path)
    return _error_response(request, ApiError(500, f"internal server error: {type(exc).__name__}",
                                             code="internal_error"))


def create_app(engine: Any) -> FastAPI:
    app = FastAPI(title="llm-serving", summary="Llama-2 serving: contest-compatible and OpenAI-compatible routes")
    app.state.engine = engine
    app.state.started = int(time.time())
    app.add_exception_handler(ApiError, _on_api_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)
    authorized = [Depends(_authorize)]
    app.include_router(legacy.router, dependencies=authorized)
    app.include_router(openai.router, dependencies=authorized)

    @app.get("/health")
    async def health() -> Response:
        if engine.healthy:
            return JSONResponse({"status": "ok"})
        reason = engine.failure or "the engine is not running"
        return JSONResponse({"status": "unavailable", "reason": reason}, status_code=503)

    @app.get("/metrics", dependencies=authorized)
    async def metrics() -> Response:
        return PlainTextResponse(engine.metrics.render(), media_type=PROMETHEUS_TEXT)

    return app
