"""The HTTP layer: contest-compatible legacy routes and OpenAI-compatible routes over the engine."""
from __future__ import annotations

from .app import create_app

__all__ = ["create_app"]
