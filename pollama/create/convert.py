"""`create` from a Hugging Face checkpoint folder: the converter for its config.json class, found
in the architectures' folders (models/<name>/convert.py, CONVERTERS), writes the GGUF."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pollama.models import discovery
from pollama.models.checkpoint import read_hf_config
from pollama.models.convert import ConvertError, ModelConverter, convert_folder

__all__ = ["ConvertError", "convert_hf", "supported_architectures"]


def supported_architectures() -> dict[str, type[ModelConverter]]:
    """config.json architecture name -> its converter, from every architecture folder's CONVERTERS
    (a converter a folder offers only on request, as Mistral's, is not listed there)."""
    found: dict[str, type[ModelConverter]] = {}
    for module in discovery.each("convert"):
        for converter in getattr(module, "CONVERTERS", ()):
            for name in converter.architectures:
                if name in found and found[name] is not converter:
                    raise ConvertError(f"{name} is converted by both {found[name].__module__} and {module.__name__}")
                found[name] = converter
    return found


def convert_hf(
    folder: str | Path,
    out_path: str | Path,
    progress: Callable[[str], None] | None = None,
    *,
    outtype: str = "f16",
    converter: type[ModelConverter] | None = None,
) -> None:
    """Convert a HF checkpoint folder to a GGUF file by the converter of its config.json class;
    ConvertError (one line) for what cannot be.

    `converter` overrides that one (e.g. the opt-in "mistral" architecture for
    MistralForCausalLM, which is converted to "llama" by default).
    """
    if converter is None:
        _, arch = read_hf_config(folder)
        converters = supported_architectures()
        converter = converters.get(arch)
        if converter is None:
            raise ConvertError(f"unsupported architecture {arch!r} (supported: {', '.join(sorted(converters))})")
    convert_folder(folder, out_path, converter, progress, outtype=outtype)
