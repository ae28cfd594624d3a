"""Sampling options, named and defaulted as Ollama's `api.Options`."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class SamplerOptions:
    """The request/Modelfile options that decide how a token is drawn from logits."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.9
    min_p: float = 0.0
    typical_p: float = 1.0
    # 1.1 is Ollama's engine-era default (HEAD moved to 1.0); the Go engine ignored it,
    # the llama.cpp runner honoured it, and so do we.
    repeat_penalty: float = 1.1
    repeat_last_n: int = 64  # 0 = off, -1 = the whole history (num_ctx)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int = -1  # -1 = a fresh random seed

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> SamplerOptions:
        """Build from an Ollama `options` mapping, ignoring keys that are not about sampling."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in options.items() if k in names and v is not None})
