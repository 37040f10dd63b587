"""Driving one request through the engine for a route: submit, follow its events (stop strings
applied), stream or collect them, and abort it whenever the client goes away or stops listening."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Sequence, TypeVar

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from ..messages import ERROR_ABNORMAL_STOP, EngineDeadError, QueueFullError, SamplingParams, TokenEvent
from .errors import ApiError
from .stop import StopChecker

T = TypeVar("T")
RETRY_AFTER_S = 1
FAILED = ("error", "abort")     # finish reasons of requests that did not complete


def submit(engine: Any, prompt_ids: list[int], params: SamplingParams) -> Any:
    try:
        return engine.submit(prompt_ids, params)
    except QueueFullError as exc:
        raise ApiError(503, f"the server is busy, retry later: {exc}", code="queue_full",
                       headers={"Retry-After": str(RETRY_AFTER_S)}) from None
    except EngineDeadError as exc:
        raise ApiError(503, f"the engine cannot serve: {exc}", code="engine_unavailable") from None


@dataclass(frozen=True)
class Delta:
    """What one engine event means for the client."""
    event: TokenEvent
    text: str                       # text to show now (stop-string hold-back applied)
    finish_reason: str | None       # "eos" | "length" | "stop" | "error" | "abort" on the last one

    @property
    def has_token(self) -> bool:
        return self.event.token_id >= 0

    def failure(self) -> ApiError:
        """The error of a request that ended with "error" (500) or "abort" (503: shutdown)."""
        return ApiError(500 if self.finish_reason == "error" else 503, self.event.error or ERROR_ABNORMAL_STOP,
                        code="generation_failed")


async def deltas(handle: Any, stops: Sequence[str]) -> AsyncIterator[Delta]:
    """The request's events; a stop string ends the request (finish reason "stop")."""
    checker = StopChecker(stops) if stops else None
    async for event in handle:
        text, reason = event.text, event.finish_reason
        if checker is not None:
            text = checker.push(text)
            if checker.stopped:
                handle.abort("stop")
                yield Delta(event, text, "stop")
                return
            if reason is not None:
                text += checker.flush()
        yield Delta(event, text, reason)


@dataclass
class Outcome:
    """A whole request, for the non-streaming routes."""
    deltas: list[Delta] = field(default_factory=list)
    text: str = ""
    finish_reason: str = ""

    @property
    def generated_tokens(self) -> int:
        return sum(d.has_token for d in self.deltas)


async def collect(handle: Any, stops: Sequence[str]) -> Outcome:
    """All events of a request; a failed request raises (500 for an error, 503 for a shutdown)."""
    out = Outcome()
    async for d in deltas(handle, stops):
        if d.finish_reason in FAILED:
            raise d.failure()
        out.deltas.append(d)
        out.text += d.text
        out.finish_reason = d.finish_reason or ""
    return out


async def until_disconnect(receive: Receive, work: Awaitable[T]) -> tuple[bool, T | None]:
    """Run `work` unless the client disconnects first: (finished, result). The request body must
    have been read already: the next ASGI message is then the disconnect."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return True, task.result()
        return False, None
    finally:
        for t in (task, watcher):
            t.cancel()
        await asyncio.gather(task, watcher, return_exceptions=True)


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def collect_or_abort(receive: Receive, handle: Any, stops: Sequence[str]) -> Outcome | None:
    """`collect`, or None when the client left first; the request never outlives this call."""
    try:
        finished, outcome = await until_disconnect(receive, collect(handle, stops))
        return outcome if finished else None
    finally:
        handle.abort()


class HandleStream(StreamingResponse):
    """Streams a request's chunks. Watches for the client leaving even while no chunk is due (a
    request can wait long in the queue) and aborts the request however the stream ends."""

    def __init__(self, chunks: AsyncIterator[str], handle: Any, media_type: str) -> None:
        super().__init__(chunks, media_type=media_type, headers={"Cache-Control": "no-cache"})
        self.handle = handle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await until_disconnect(receive, self.stream_response(send))
        except OSError:     # the client left while a chunk was being sent
            pass
        finally:
            self.handle.abort()
