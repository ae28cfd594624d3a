"""Ollama's built-in template names, as Go templates written for this project.

Each `<name>.gotmpl` is a Go template for one prompt format; `<name>.json`, when present,
holds the parameters Ollama attaches with it (its stop strings) on create.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

from ..gotemplate import Template


@dataclass(frozen=True)
class NamedTemplate:
    """A named prompt format: its Go template text and the parameters that go with it."""

    name: str
    template: str
    params: dict = field(default_factory=dict)

    def parse(self) -> Template:
        """The parsed Go template."""
        return Template.parse(self.template, name=self.name)


def names() -> list[str]:
    """The names of every built-in template, sorted."""
    return sorted(p.name[: -len(".gotmpl")] for p in resources.files(__name__).iterdir()
                  if p.name.endswith(".gotmpl"))


@cache
def named_template(name: str) -> NamedTemplate:
    """The built-in template `name`; KeyError naming the known ones when there is none."""
    folder = resources.files(__name__)
    text_file = folder / f"{name}.gotmpl"
    if "/" in name or not text_file.is_file():
        raise KeyError(f"no built-in template named {name!r} (known: {', '.join(names())})")
    params_file = folder / f"{name}.json"
    params = json.loads(params_file.read_text(encoding="utf-8")) if params_file.is_file() else {}
    return NamedTemplate(name, text_file.read_text(encoding="utf-8"), params)


def all_named() -> list[NamedTemplate]:
    """Every built-in template."""
    return [named_template(n) for n in names()]
