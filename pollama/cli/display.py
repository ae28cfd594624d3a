"""How `run` shows an answer, as Ollama's CLI does: a spinner on stderr until the first words,
thinking between "Thinking..." and "...done thinking.", and words wrapped at the terminal width.

The behaviour follows Ollama's cmd/cmd.go (displayResponse, thinkingOutputOpeningText,
chat/generate) and progress/spinner.go; the code is ours.
"""

from __future__ import annotations

import os
import sys
import threading
import unicodedata
from typing import TextIO

# Ollama's readline colours (readline/types.go): the thinking is grey, its headings bold grey.
GREY = "\x1b[38;5;245m"
BOLD = "\x1b[1m"
RESET = "\x1b[0m"

THINKING_OPENS = "Thinking...\n"
THINKING_CLOSES = "...done thinking.\n\n"

# Ollama's progress.Spinner frames, one every 100 ms.
SPINNER_FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Spinner:
    """Ollama's braille spinner on stderr while a model loads or a prompt is read; nothing when
    stderr is not a terminal (escape codes would only litter a log)."""

    def __init__(self, stream: TextIO | None = None, message: str = ""):
        self.stream = stream or sys.stderr
        self.message = message
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._shown = False
        self._thread: threading.Thread | None = None
        if is_terminal(self.stream):
            self._thread = threading.Thread(target=self._spin, name="spinner", daemon=True)
            self._thread.start()

    def _spin(self) -> None:
        frame = 0
        while not self._stopped.wait(0 if frame == 0 else 0.1):
            text = (self.message + " " if self.message else "") + SPINNER_FRAMES[frame % len(SPINNER_FRAMES)] + " "
            with self._lock:
                if self._stopped.is_set():
                    return
                # Hide the cursor, draw the frame at column 1, clear the rest of the line.
                self.stream.write("\x1b[?25l\x1b[1G" + text + "\x1b[K\x1b[?25h")
                self.stream.flush()
                self._shown = True
            frame += 1

    def stop(self) -> None:
        """Stop and erase the spinner (Ollama's StopAndClear); safe to call again."""
        if self._stopped.is_set():
            return
        with self._lock:
            self._stopped.set()
            if self._shown:
                self.stream.write("\x1b[2K\x1b[1G")
                self.stream.flush()

    def __enter__(self) -> Spinner:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def char_width(ch: str) -> int:
    """Columns a character takes on a terminal (go-runewidth's idea: wide East Asian and emoji
    characters take two, combining marks none)."""
    if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def text_width(text: str) -> int:
    return sum(char_width(ch) for ch in text)


def terminal_width(stream: TextIO) -> int:
    """The terminal's width in columns; 80 when it has none (Ollama's default)."""
    try:
        return os.get_terminal_size(stream.fileno()).columns or 80
    except (AttributeError, ValueError, OSError):
        return 80


class WordWrapper:
    """Ollama's displayResponse: text streamed a piece at a time, and a word that would reach
    the last 5 columns moved whole to the next line (backing the cursor over it and clearing
    the rest of the line, since it was already printed). A word longer than the width less 10
    is not moved but broken. Without wrapping the text goes out as it comes."""

    def __init__(self, out: TextIO, wrap: bool):
        self.out = out
        self.wrap = wrap
        self.line_length = 0
        self.word = ""

    def write(self, text: str) -> None:
        width = terminal_width(self.out)
        if not (self.wrap and width >= 10):
            self.out.write(self.word + text)
            self.word = ""
            self.out.flush()
            return
        pieces = []
        for ch in text:
            if self.line_length + 1 > width - 5:
                if text_width(self.word) > width - 10:  # too long to move: break it here
                    pieces.append(self.word + ch)
                    self.word, self.line_length = "", 0
                    continue
                back = text_width(self.word)
                pieces.append((f"\x1b[{back}D" if back else "") + "\x1b[K\n" + self.word + ch)
                self.line_length = back + char_width(ch)
                continue
            pieces.append(ch)
            self.line_length += char_width(ch)
            if char_width(ch) >= 2:
                self.word = ""
            elif ch in " \t":
                self.word = ""
            elif ch in "\r\n":
                self.word, self.line_length = "", 0
            else:
                self.word += ch
        self.out.write("".join(pieces))
        self.out.flush()


class AnswerPrinter:
    """One answer as `ollama run` prints it: thinking (unless hidden) between its opening and
    closing lines, then the content, each word-wrapped; grey and bold on a terminal, plain
    words when `plain` (Ollama's generate() when stdout is not a terminal)."""

    def __init__(self, out: TextIO | None = None, *, wrap: bool = False, hide_thinking: bool = False,
                 plain: bool = False, spinner: Spinner | None = None):
        self.out = out or sys.stdout
        self.wrap = wrap
        self.hide_thinking = hide_thinking
        self.plain = plain
        self.spinner = spinner
        self.text = WordWrapper(self.out, wrap)
        self.thinking: list[str] = []
        self.content: list[str] = []
        self._in_thinking = False

    def _opening(self) -> str:
        return THINKING_OPENS if self.plain else GREY + BOLD + THINKING_OPENS + RESET + GREY

    def _closing(self) -> str:
        return THINKING_CLOSES if self.plain else GREY + BOLD + THINKING_CLOSES + RESET

    def add(self, content: str = "", thinking: str = "") -> None:
        """One streamed piece of the answer."""
        if self.spinner is not None and (content or not self.hide_thinking):
            self.spinner.stop()
        if thinking:
            self.thinking.append(thinking)
            if not self.hide_thinking:
                if not self._in_thinking:
                    self.out.write(self._opening())
                    self._in_thinking = True
                self.text.write(thinking)
        if content and self._in_thinking:
            if not "".join(self.thinking).endswith("\n"):
                self.out.write("\n")
            self.out.write(self._closing())
            self._in_thinking = False
            self.text = WordWrapper(self.out, self.wrap)
        if content:
            self.content.append(content)
            self.text.write(content)
        self.out.flush()

    def close(self) -> None:
        """At the end of the answer: back to the terminal's colours if thinking was the last thing shown."""
        if self.spinner is not None:
            self.spinner.stop()
        if self._in_thinking and not self.plain:
            self.out.write(RESET)
            self.out.flush()
