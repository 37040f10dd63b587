"""Stop strings over streamed text: release text as soon as it can no longer start a stop string.

Text arrives in arbitrary pieces (one per token). A stop string may span pieces, so the tail of the
text that equals the beginning of some stop string is held back until the next piece decides it.
Whatever is released never contains a stop string nor any part of the one that ends generation.
"""
from __future__ import annotations

from typing import Sequence


class StopChecker:
    def __init__(self, stops: Sequence[str]) -> None:
        if any(not s for s in stops):
            raise ValueError("stop strings must be non-empty")
        self.stops = tuple(stops)
        self._held = ""
        self.stopped = False

    def push(self, piece: str) -> str:
        """Add `piece`; return the text that is now safe to release. After a stop string is found,
        `stopped` is True and nothing more is accepted."""
        if self.stopped:
            raise RuntimeError("push after a stop string was found")
        text = self._held + piece
        # A stop string starts inside `text`: everything released earlier could not begin one.
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            self._held = ""
            return text[:min(hits)]
        keep = self._partial_suffix(text)
        self._held = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep]

    def flush(self) -> str:
        """The end of the text: what was held back cannot become a stop string any more."""
        held, self._held = self._held, ""
        return held

    def _partial_suffix(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of a stop string."""
        best = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:n]):
                    best = n
                    break
        return best
