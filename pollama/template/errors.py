"""The one error type of the template layer."""

from __future__ import annotations


class TemplateError(Exception):
    """A template that cannot be parsed or executed, located where Go would locate it.

    `name` is the template's name, `line` (from 1) and `col` (a byte offset within the line,
    from 0, as Go's ErrorContext counts it) point at the fault when it is known.
    """

    def __init__(self, message: str, *, name: str = "", line: int | None = None, col: int | None = None):
        self.name = name
        self.line = line
        self.col = col
        self.reason = message
        if line is None:
            text = f"template: {name}: {message}"
        elif col is None:
            text = f"template: {name}:{line}: {message}"
        else:
            text = f"template: {name}:{line}:{col}: {message}"
        super().__init__(text)
