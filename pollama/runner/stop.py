"""Stop strings: hold back generated text that might be the start of one, cut at the first match."""

from __future__ import annotations


class StopBuffer:
    """Filters a stream of decoded text pieces against a request's `stop` strings."""

    def __init__(self, stops: list[str]):
        # An empty stop string would match before any text; it can only be a mistake.
        self.stops = [s for s in stops if s]
        self.stopped = False
        self._held = ""

    def push(self, text: str) -> tuple[str, bool]:
        """Add a piece; returns (text safe to emit now, whether a stop string was reached)."""
        if self.stopped:
            return "", True
        pending = self._held + text

        # The match that completes first wins, as it would if the text came one character
        # at a time: text before it is the answer, the rest is discarded.
        hits = [(i + len(s), i) for s in self.stops if (i := pending.find(s)) >= 0]
        if hits:
            self.stopped = True
            self._held = ""
            return pending[: min(hits)[1]], True

        # Hold the longest tail that could still grow into a stop string. Any earlier
        # start would need a longer such tail, so everything before it is safe to emit.
        hold = self._longest_partial_tail(pending)
        split = len(pending) - hold
        self._held = pending[split:]
        return pending[:split], False

    def flush(self) -> str:
        """At the end of generation (EOS, length): release the text still held back."""
        held, self._held = self._held, ""
        return held

    def _longest_partial_tail(self, text: str) -> int:
        """Length of the longest suffix of text that is a proper prefix of some stop string."""
        best = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:n]):
                    best = n
                    break
        return best
