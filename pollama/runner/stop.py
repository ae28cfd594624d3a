"""Stop strings: hold back generated text that might be the start of one, cut at the first match.

Each stop string is matched as a stream, one character at a time (Knuth-Morris-Pratt): a
piece costs a few steps per stop string whatever their lengths, and the text held back is
the longest tail that is still a prefix of one of them.
"""

from __future__ import annotations


def _failure(stop: str) -> list[int]:
    """KMP's table: fail[k] is the longest proper prefix of stop[:k] that is also its suffix."""
    fail = [0] * (len(stop) + 1)
    k = 0
    for i in range(1, len(stop)):
        while k and stop[i] != stop[k]:
            k = fail[k]
        if stop[i] == stop[k]:
            k += 1
        fail[i + 1] = k
    return fail


class StopBuffer:
    """Filters a stream of decoded text pieces against a request's `stop` strings."""

    def __init__(self, stops: list[str]):
        # An empty stop string would match before any text; it can only be a mistake.
        self.stops = list(dict.fromkeys(s for s in stops if s))
        self._fail = [_failure(s) for s in self.stops]
        self._state = [0] * len(self.stops)  # characters of each stop string matched so far
        self.stopped = False
        self._held = ""

    def push(self, text: str) -> tuple[str, bool]:
        """Add a piece; returns (text safe to emit now, whether a stop string was reached)."""
        if self.stopped:
            return "", True
        pending = self._held + text
        if not self.stops:
            self._held = ""
            return pending, False
        stops, fails, state = self.stops, self._fail, self._state
        offset = len(self._held)
        for j, c in enumerate(text):
            # The match that completes first wins, as it would if the text came one character
            # at a time; of those ending here, the longest (it starts first).
            start = None
            for n, stop in enumerate(stops):
                k = state[n]
                while k and stop[k] != c:
                    k = fails[n][k]
                if stop[k] == c:
                    k += 1
                if k == len(stop):
                    end = offset + j + 1
                    if start is None or end - k < start:
                        start = end - k
                    k = fails[n][k]
                state[n] = k
            if start is not None:
                self.stopped = True
                self._held = ""
                return pending[:start], True
        # Hold the longest tail that could still grow into a stop string. Any earlier start
        # would need a longer such tail, so everything before it is safe to emit.
        split = len(pending) - max(state)
        self._held = pending[split:]
        return pending[:split], False

    def flush(self) -> str:
        """At the end of generation (EOS, length): release the text still held back."""
        held, self._held = self._held, ""
        self._state = [0] * len(self.stops)
        return held
