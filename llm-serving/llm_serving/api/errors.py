"""Client-facing errors and their two JSON shapes (legacy routes and OpenAI-compatible routes).

    legacy:  {"error": "<text>", "field": "<dotted path>", "rule": "<what is allowed>"}
    /v1:     {"error": {"message": "<text>", "type": "invalid_request_error", "param": ..., "code": ...}}
"""
from __future__ import annotations

from typing import Any

from pydantic import ValidationError

OPENAI_PREFIX = "/v1/"


class ApiError(Exception):
    def __init__(self, status: int, message: str, field: str | None = None, rule: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.field, self.rule = status, message, field, rule
        self.code, self.headers = code, headers

    def legacy_body(self) -> dict[str, Any]:
        return {"error": self.message, "field": self.field, "rule": self.rule}

    def openai_body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.field, "code": self.code}}

    def body_for(self, path: str) -> dict[str, Any]:
        return self.openai_body() if path.startswith(OPENAI_PREFIX) else self.legacy_body()


def invalid(field: str, rule: str, got: Any = None, message: str | None = None) -> ApiError:
    """A 400 for a value that breaks `rule`."""
    text = message or f"{field}: {rule}"
    if got is not None:
        text += f" (got {_short(got)})"
    return ApiError(400, text, field=field, rule=rule, code="invalid_value")


def dotted(loc: tuple[int | str, ...]) -> str:
    """('messages', 1, 'role') -> 'messages[1].role'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def from_validation_error(exc: ValidationError) -> ApiError:
    """The first problem pydantic found, as a 400 naming the field and the rule."""
    first = exc.errors(include_url=False)[0]
    field = dotted(first["loc"]) or "body"
    kind, msg = first["type"], first["msg"]
    if kind == "extra_forbidden":
        return ApiError(400, f"{field}: unknown field, not an accepted field", field=field,
                        rule="not an accepted field", code="unknown_field")
    if kind == "missing":
        return ApiError(400, f"{field}: required", field=field, rule="required", code="missing")
    if kind == "model_type" and field == "body":
        return invalid("body", "must be a JSON object", got=type(first["input"]).__name__)
    # `msg` is our rule text (errors of type "rule", see schemas) or pydantic's type rule.
    err = invalid(field, msg, got=first.get("input"))
    if len(exc.errors()) > 1:
        err.message += f" (and {len(exc.errors()) - 1} more problem(s))"
    return err


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
