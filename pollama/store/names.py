"""Model names with Ollama's grammar: ``[scheme://][host/][namespace/]model[:tag]``.

A name has four parts, each one directory level of the store
(``manifests/<host>/<namespace>/<model>/<tag>``). Missing parts take Ollama's defaults
(registry.ollama.ai / library / latest). The rules per part are those of Ollama's
types/model/name.go:

    host       [A-Za-z0-9_][A-Za-z0-9_.:-]*   1..350 characters
    namespace  [A-Za-z0-9_][A-Za-z0-9_-]*     1..80
    model      [A-Za-z0-9_][A-Za-z0-9_.-]*    1..80
    tag        [A-Za-z0-9_][A-Za-z0-9_.-]*    1..80

Because every part starts with a letter, digit or underscore and no part may hold a slash
or backslash, no valid name can be ".", "..", absolute, or reach outside the store: the
grammar is the path-safety check (the store checks containment once more anyway).

Ollama dropped "model@digest" references from its names (types/model: "remove knowledge of
digest"); such a name is invalid there, and here it is refused with a message that says so.
Names compare case-insensitively, as Ollama matches them with strings.EqualFold.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from pollama.store.errors import InvalidName

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
DEFAULT_SCHEME = "https"
SCHEMES = ("http", "https")

# (pattern, max length) per part. re.ASCII keeps \w-like classes from admitting Unicode.
_PART_RULES: dict[str, tuple[re.Pattern[str], int, str]] = {
    "host": (re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]*", re.ASCII), 350, "letters, digits, '_', '-', '.' and ':'"),
    "namespace": (re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*", re.ASCII), 80, "letters, digits, '_' and '-'"),
    "model": (re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", re.ASCII), 80, "letters, digits, '_', '-' and '.'"),
    "tag": (re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", re.ASCII), 80, "letters, digits, '_', '-' and '.'"),
}
PART_KINDS = ("host", "namespace", "model", "tag")


def part_problem(kind: str, value: str) -> str | None:
    """Why value is not a valid name part of this kind ("host", "namespace", ...), or None."""
    pattern, limit, allowed = _PART_RULES[kind]
    if not value:
        return f"{kind} is empty"
    if len(value) > limit:
        return f"{kind} is longer than {limit} characters"
    if not pattern.fullmatch(value):
        return f"{kind} {value!r} must start with a letter, digit or '_' and hold only {allowed}"
    return None


def is_valid_part(kind: str, value: str) -> bool:
    """Whether value is a valid name part of this kind."""
    return part_problem(kind, value) is None


def _name_problem(parts: tuple[str, ...], scheme: str) -> str | None:
    for kind, value in zip(PART_KINDS, parts):
        if not isinstance(value, str):
            return f"{kind} must be a string, not {type(value).__name__}"
        problem = part_problem(kind, value)
        if problem:
            return problem
    if scheme not in SCHEMES:
        return "scheme must be http or https"
    return None


@dataclass(frozen=True, eq=False)
class ModelName:
    """A fully qualified, validated model name. Equality and hashing ignore case (and scheme)."""

    host: str
    namespace: str
    model: str
    tag: str
    scheme: str = field(default=DEFAULT_SCHEME)

    def __post_init__(self) -> None:
        problem = _name_problem(self.parts, self.scheme)
        if problem:
            raise InvalidName(f"invalid model name {self._joined()!r}: {problem}")

    @classmethod
    def parse(cls, text: str) -> ModelName:
        """Parse "[scheme://][host/][namespace/]model[:tag]", filling Ollama's defaults."""
        if isinstance(text, ModelName):
            return text
        if not isinstance(text, str):
            raise InvalidName(f"invalid model name: expected a string, not {type(text).__name__}")
        if "@" in text:
            raise InvalidName(f"invalid model name {text!r}: digest references (name@sha256:...) are not supported")

        def bad(problem: str) -> InvalidName:
            return InvalidName(f"invalid model name {text!r}: {problem}")

        # Cut from the right, as Ollama does: a ':' after the last '/' starts the tag, and
        # ':' is legal in the host (a port), so the host is whatever remains at the end.
        rest, tag = text, DEFAULT_TAG
        if rest.rfind(":") > rest.rfind("/"):
            rest, _, tag = rest.rpartition(":")
            if not tag:
                raise bad("tag is empty")
        host, namespace = DEFAULT_HOST, DEFAULT_NAMESPACE
        scheme = DEFAULT_SCHEME
        if "/" in rest:
            rest, _, model = rest.rpartition("/")
            if "/" in rest:
                rest, _, namespace = rest.rpartition("/")
                scheme_part, sep, host = rest.partition("://")
                if sep:
                    scheme = scheme_part.lower()
                    if scheme not in SCHEMES:
                        raise bad(f"scheme {scheme_part!r} is not http or https")
                else:
                    host = rest
            else:
                namespace = rest
            # An empty part between separators ("/nn/mm", "h//m") is an error, not a default.
            for kind, value in (("host", host), ("namespace", namespace), ("model", model)):
                if not value:
                    raise bad(f"{kind} is empty")
        else:
            model = rest
        problem = _name_problem((host, namespace, model, tag), scheme)
        if problem:
            raise bad(problem)
        return cls(host, namespace, model, tag, scheme)

    @classmethod
    def from_parts(cls, parts: tuple[str, ...] | list[str]) -> ModelName:
        """Build a name from its four parts (host, namespace, model, tag), e.g. a manifest path."""
        if len(parts) != 4:
            raise InvalidName(f"invalid model name: expected 4 parts, got {len(parts)}")
        return cls(*parts)

    @property
    def parts(self) -> tuple[str, str, str, str]:
        """(host, namespace, model, tag): the directory levels under manifests/."""
        return (self.host, self.namespace, self.model, self.tag)

    @property
    def key(self) -> tuple[str, str, str, str]:
        """The parts folded to lower case: what identifies a model (names are ASCII)."""
        return tuple(p.lower() for p in self.parts)  # type: ignore[return-value]

    @property
    def relpath(self) -> PurePosixPath:
        """host/namespace/model/tag, relative to the manifests directory."""
        return PurePosixPath(*self.parts)

    @property
    def display(self) -> str:
        """Ollama's shortest form: "model:tag", "namespace/model:tag" or "host/namespace/model:tag"."""
        if self.host.lower() != DEFAULT_HOST:
            return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        if self.namespace.lower() != DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"

    @property
    def base_url(self) -> str:
        """The registry's base URL, e.g. "https://registry.ollama.ai"."""
        return f"{self.scheme}://{self.host}"

    def with_parts(self, parts: tuple[str, ...]) -> ModelName:
        """The same name spelled with other (e.g. on-disk) casing of its parts."""
        return ModelName(*parts, scheme=self.scheme)

    def _joined(self) -> str:
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    def __str__(self) -> str:
        return self._joined()

    def __repr__(self) -> str:
        return f"ModelName({self._joined()!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ModelName):
            return NotImplemented
        return self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)


def parse_name(text: str | ModelName) -> ModelName:
    """Parse a model name (see ModelName.parse); InvalidName says which part is wrong."""
    return ModelName.parse(text)


def is_valid_name(text: str) -> bool:
    """Whether text parses as a model name."""
    try:
        ModelName.parse(text)
    except InvalidName:
        return False
    return True
