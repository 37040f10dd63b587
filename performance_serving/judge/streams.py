"""Parsers of streamed answers, one per backend: fed line by line with arrival times, never raising.

Both produce a `StreamResult`. A malformed line is recorded as a protocol error (the first one is
kept) and reading goes on, so one bad line never crashes the judge or loses the timing.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, List, Optional

# Keys only the legacy final full-response object carries (PROTOCOL.md §1), not a token line.
_FULL_RESPONSE_KEYS = ("finish_reason", "generated_tokens")


@dataclass
class StreamResult:
    text: str = ""
    first_time: Optional[float] = None     # s from request start to the first token
    token_times: List[float] = field(default_factory=list)  # arrival of each token-carrying chunk
    output_tokens: int = 0
    error: Optional[str] = None


class StreamParser:
    def __init__(self) -> None:
        self.result = StreamResult()
        self._lines = 0

    def feed(self, line: str, now: float) -> None:
        line = line.strip()
        if line:
            self._lines += 1
            self._feed(line, now)

    def finish(self) -> StreamResult:
        return self.result

    def _feed(self, line: str, now: float) -> None:
        raise NotImplementedError

    def _protocol_error(self, message: str, line: str) -> None:
        if self.result.error is None:
            self.result.error = f"protocol: line {self._lines} {message}: {line[:200]!r}"


class LegacyStreamParser(StreamParser):
    """`/generate_stream` JSON lines: one per token, then (return_full_text) the full response.

    As in the contest judge, the first-token time is the arrival of the first line and the text
    is the last line's `generated_text`; output tokens are the token lines, the full-response
    line excluded.
    """

    def __init__(self) -> None:
        super().__init__()
        self._pieces: list[str] = []
        self._full_text: Optional[str] = None

    def _feed(self, line: str, now: float) -> None:
        try:
            item = json.loads(line)["data"][0]
            text = item["generated_text"]
        except (ValueError, KeyError, IndexError, TypeError):
            self._protocol_error('is not {"data": [{"generated_text": ...}]}', line)
            return
        if not isinstance(text, str):
            self._protocol_error("has a non-string generated_text", line)
            return
        if self.result.first_time is None:
            self.result.first_time = now
        if any(key in item for key in _FULL_RESPONSE_KEYS):
            self._full_text = text
        else:
            self._pieces.append(text)
            self.result.token_times.append(now)

    def finish(self) -> StreamResult:
        res = self.result
        res.output_tokens = len(res.token_times)
        if self._lines == 0 and res.error is None:
            res.error = "protocol: empty stream (no line)"
        res.text = self._full_text if self._full_text is not None else "".join(self._pieces)
        return res


class OpenAIStreamParser(StreamParser):
    """`/v1/completions` server-sent events: `data: {json}` chunks ending with `data: [DONE]`.

    Like vLLM's benchmark, the output token count is the final usage chunk's completion_tokens
    (the number of text chunks if the server sends no usage).
    """

    def __init__(self) -> None:
        super().__init__()
        self._pieces: list[str] = []
        self._usage_tokens: Optional[int] = None
        self._done = False

    def _feed(self, line: str, now: float) -> None:
        if not line.startswith("data:"):
            return  # SSE comments and other fields (event:, id:, retry:) carry no tokens
        payload = line[len("data:"):].strip()
        if payload == "[DONE]":
            self._done = True
            return
        try:
            chunk: Any = json.loads(payload)
            if not isinstance(chunk, dict):
                raise TypeError
        except (ValueError, TypeError):
            self._protocol_error("is not a JSON object", line)
            return
        if "error" in chunk:
            self._protocol_error("carries an error", line)
            return
        choices = chunk.get("choices") or []
        text = choices[0].get("text") if choices and isinstance(choices[0], dict) else None
        if text:
            if self.result.first_time is None:
                self.result.first_time = now
            self._pieces.append(text)
            self.result.token_times.append(now)
        usage = chunk.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
            self._usage_tokens = usage["completion_tokens"]

    def finish(self) -> StreamResult:
        res = self.result
        res.text = "".join(self._pieces)
        res.output_tokens = self._usage_tokens if self._usage_tokens is not None else len(res.token_times)
        if not self._done and res.error is None:
            res.error = "protocol: stream ended without 'data: [DONE]'"
        return res
