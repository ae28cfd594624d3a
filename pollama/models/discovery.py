"""Architectures are found from their folders: nothing lists them.

`pollama/models/<name>/` is the architecture whose GGUF `general.architecture` is `<name>`
(ALIASES names the few that differ): its `__init__.py` imports its model, which registers
itself; its `convert.py` offers its converters to `create` (CONVERTERS); its `reference.py`
tells `pollama compare` where transformers keeps its layers (ADAPTERS). A folder whose name
starts with `_` (the template) is never found.

Folders outside the package are found too, in the directories that POLLAMA_ARCH_PATH lists
(os.pathsep-separated): a copy of `_template` there is an architecture with no other edit.
pollama's own folders come first, so a plugin cannot replace one of them.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil
import re
from types import ModuleType

import pollama.models
from pollama import envconfig

# GGUF general.architecture -> the folder that holds it, where the two differ.
ALIASES = {"qwen25vl": "qwen2vl", "qwen3moe": "qwen3", "gpt-oss": "gptoss"}

_NAME = re.compile(r"[a-z0-9][a-z0-9_]*")
_OWN_PATH = list(pollama.models.__path__)


def search_path() -> list[str]:
    """pollama/models, then each directory of POLLAMA_ARCH_PATH (the package's __path__ follows it)."""
    extra = [os.path.abspath(p) for p in envconfig.arch_path()]
    path = _OWN_PATH + [p for p in dict.fromkeys(extra) if p not in _OWN_PATH]
    if list(pollama.models.__path__) != path:
        pollama.models.__path__[:] = path
        importlib.invalidate_caches()
    return path


def folders() -> list[str]:
    """The architecture folders: packages under the search path not starting with `_`."""
    names = {m.name for m in pkgutil.iter_modules(search_path()) if m.ispkg and _NAME.fullmatch(m.name)}
    return sorted(names)


def import_folder(name: str) -> ModuleType | None:
    """Import pollama.models.<name> (its model registers itself); None when no folder has that name."""
    if name not in folders():
        return None
    return importlib.import_module(f"pollama.models.{name}")


def folder_for(arch: str) -> str:
    """The folder an architecture name is found in."""
    return ALIASES.get(arch, arch)


def each(module: str) -> list[ModuleType]:
    """pollama.models.<folder>.<module> of every folder that has one (convert, reference)."""
    found = []
    for name in folders():
        qualified = f"pollama.models.{name}.{module}"
        if importlib.util.find_spec(qualified) is not None:
            found.append(importlib.import_module(qualified))
    return found
