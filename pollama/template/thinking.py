"""Streamed model output -> thinking and content, as Ollama's thinking/ package splits it.

    parser = ThinkingParser("<think>", "</think>")
    for piece in pieces:
        thinking, content = parser.add(piece)
    thinking, content = parser.finish()

Ollama's rules, kept here: whitespace before the opening tag is skipped; any other text
before it means the model did not think (everything is content, untrimmed); whitespace right
after the opening tag and right after the closing tag is eaten; a possible partial tag at the
end of the text seen so far is held back until the next piece decides it; only the first
thinking block counts (a later one is content).

Where this differs from Ollama, on purpose: Ollama has no end of stream and silently drops
text still held back when the model stops (a partial tag, or blank text before any tag);
`finish()` hands it out as what it would have become had the text gone on.
"""

from __future__ import annotations

import enum

from .gotemplate import Template, thinking_tags

__all__ = ["GO_SPACE", "ThinkingParser", "ThinkingState", "infer_thinking_tags", "jinja_thinking_tags"]

# Go's unicode.IsSpace (Python's str.isspace also counts \x1c-\x1f, which Go does not).
GO_SPACE = "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a" \
           "\u2028\u2029\u202f\u205f\u3000"


class ThinkingState(enum.Enum):
    """Where the parser is; the names are Ollama's states."""

    LOOKING_FOR_OPENING = "LookingForOpening"
    THINKING_STARTED_EATING_WHITESPACE = "ThinkingStartedEatingWhitespace"
    THINKING = "Thinking"
    THINKING_DONE_EATING_WHITESPACE = "ThinkingDoneEatingWhitespace"
    THINKING_DONE = "ThinkingDone"


def _overlap(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper start of `tag`."""
    for n in range(min(len(tag), len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


class ThinkingParser:
    """Ollama's streaming thinking parser: add(piece) -> (thinking, content) deltas."""

    def __init__(self, opening: str = "<think>", closing: str = "</think>", *, started: bool = False):
        if not opening or not closing:
            raise ValueError("thinking tags must not be empty")
        self.opening = opening
        self.closing = closing
        self.state = ThinkingState.LOOKING_FOR_OPENING
        self._held = ""
        if started:
            self.open()

    def open(self) -> None:
        """The prompt already opened the thinking block: the model starts inside it (Ollama feeds the tag)."""
        self.add(self.opening)

    def add(self, text: str) -> tuple[str, str]:
        """Take the next piece of output; return the thinking and content that are now certain."""
        self._held += text
        thinking: list[str] = []
        content: list[str] = []
        # Several states can be passed in one piece; loop until the text held is undecided.
        while True:
            t, c, again = self._step()
            thinking.append(t)
            content.append(c)
            if not again:
                return "".join(thinking), "".join(content)

    def finish(self) -> tuple[str, str]:
        """End of output: hand out what is still held back, as thinking or content."""
        held, self._held = self._held, ""
        if self.state is ThinkingState.LOOKING_FOR_OPENING:
            # Blank text or the start of an opening tag that never came: that was content.
            self.state = ThinkingState.THINKING_DONE
            return "", held
        if self.state is ThinkingState.THINKING:
            # The start of a closing tag that never came: that was thinking.
            return held, ""
        return "", ""

    def _step(self) -> tuple[str, str, bool]:
        """One transition: (thinking, content, whether to go on with the text held)."""
        s = ThinkingState
        held = self._held
        if self.state is s.LOOKING_FOR_OPENING:
            trimmed = held.lstrip(GO_SPACE)
            if trimmed.startswith(self.opening):
                after = trimmed[len(self.opening):].lstrip(GO_SPACE)
                self._held = after
                self.state = s.THINKING if after else s.THINKING_STARTED_EATING_WHITESPACE
                return "", "", True
            if self.opening.startswith(trimmed):
                return "", "", False  # blank so far, or a partial opening tag: wait
            # Text before any opening tag: the model is not thinking; keep its whitespace.
            self._held = ""
            self.state = s.THINKING_DONE
            return "", held, False
        if self.state is s.THINKING_STARTED_EATING_WHITESPACE:
            trimmed = held.lstrip(GO_SPACE)
            self._held = trimmed
            if not trimmed:
                return "", "", False
            self.state = s.THINKING
            return "", "", True
        if self.state is s.THINKING:
            thinking, tag, rest = held.partition(self.closing)
            if tag:
                rest = rest.lstrip(GO_SPACE)
                self._held = ""
                self.state = s.THINKING_DONE if rest else s.THINKING_DONE_EATING_WHITESPACE
                return thinking, rest, False
            n = _overlap(held, self.closing)
            self._held = held[len(held) - n:] if n else ""
            return held[:len(held) - n], "", False
        if self.state is s.THINKING_DONE_EATING_WHITESPACE:
            trimmed = held.lstrip(GO_SPACE)
            self._held = ""
            if trimmed:
                self.state = s.THINKING_DONE
            return "", trimmed, False
        self._held = ""
        return "", held, False


def infer_thinking_tags(template: Template | str | None) -> tuple[str, str] | None:
    """The (opening, closing) thinking tags of a Go template, as Ollama's thinking.InferTags finds them."""
    if template is None:
        return None
    if isinstance(template, str):
        template = Template.parse(template)
    return thinking_tags(template)


# (opening, closing) thinking tags of Jinja chat templates, known by what the template writes:
# the common <think> block, and Gemma 4's thought channel (as llama.cpp's gemma4 parser reads it).
JINJA_THINKING_TAGS = (("<think>", "</think>"), ("<|channel>thought", "<channel|>"))


def jinja_thinking_tags(chat_template: str | None) -> tuple[str, str] | None:
    """The thinking tags a Jinja chat template writes (both of a pair: JINJA_THINKING_TAGS), else None.

    Ollama hands Jinja-only models to llama-server, whose own parsers know these tags; this is
    pollama's stand-in for models without a Go template.
    """
    for opening, closing in JINJA_THINKING_TAGS if chat_template else ():
        if opening in chat_template and closing in chat_template:
            return opening, closing
    return None
