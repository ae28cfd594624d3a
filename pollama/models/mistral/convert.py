"""HF MistralForCausalLM -> GGUF "mistral" (Llama's layout plus the sliding window), on request.

`pollama create` converts MistralForCausalLM to "llama", as Ollama and llama.cpp do, so that the
file runs everywhere; that drops the window (see models/llama/convert.py). This converter is the
opt-in: `python -m pollama.models.mistral.convert FOLDER OUT.gguf`, or `convert(folder, out)`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from pollama.create import convert as hf
from pollama.create.convert import ConvertError, rope_scaling_metadata
from pollama.fs.writer import write_gguf
from pollama.models.llama.convert import LlamaConverter
from pollama.tokenizer.convert import TokenizerConvertError, convert_tokenizer


class MistralConverter(LlamaConverter):
    arch = "mistral"
    architectures = ("MistralForCausalLM",)

    def metadata(self) -> dict:
        c = self.cfg
        self.check_activation("hidden_act", ("silu",), "silu")
        rope = c.rope()
        if rope["rope_type"] == "llama3":
            raise ConvertError("config.json rope scaling 'llama3' is Llama 3.1's, not Mistral's")
        md = self.decoder_metadata(default_eps=1e-6, default_ctx=32768)  # MistralConfig's defaults
        md["rope.freq_base"] = float(rope["rope_theta"])
        md["rope.dimension_count"] = self.head_dim()
        md.update(rope_scaling_metadata(rope))
        window = c.get("sliding_window")
        if window is not None:
            if not isinstance(window, int) or isinstance(window, bool) or window <= 0:
                raise ConvertError(f"config.json sliding_window must be a positive integer, got {window!r}")
            md["attention.sliding_window"] = window
        return md


def convert(folder: str | Path, out_path: str | Path, progress=None, *, outtype: str = "f16") -> None:
    """Convert a MistralForCausalLM folder to a GGUF "mistral" file; ConvertError (one line) if it cannot be."""
    folder = Path(folder)
    say = progress or (lambda status: None)
    if outtype not in hf.OUT_TYPES:
        raise ConvertError(f"output type {outtype!r} is not one of {', '.join(hf.OUT_TYPES)}")
    config = _read_config(folder)
    archs = config.get("architectures")
    if not isinstance(archs, list) or archs[:1] != ["MistralForCausalLM"]:
        raise ConvertError(f"{folder / 'config.json'}: architectures is {archs!r}, not ['MistralForCausalLM']")
    conv = MistralConverter(hf.HFConfig(config))
    model_md = conv.metadata()  # refuses a bad config before anything is read
    # What convert_hf does once it has picked a converter (it picks "llama" for this class).
    try:
        tokenizer_md = convert_tokenizer(folder, conv.cfg.require("vocab_size"), config)
    except TokenizerConvertError as e:
        raise ConvertError(str(e)) from None
    with hf.open_weights(folder) as weights:
        tensor_type, file_type = hf.OUT_TYPES[outtype]
        tensors = hf._convert_tensors(conv, weights, tensor_type, say)
        metadata = {
            "general.architecture": conv.arch,
            "general.name": folder.name,
            "general.file_type": int(file_type),
            "general.quantization_version": 2,
            "general.parameter_count": sum(math.prod(shape) for _, _, _, shape in tensors),
            **{f"{conv.arch}.{k}": v for k, v in model_md.items()},
            **tokenizer_md,
        }
        say(f"writing {out_path}")
        write_gguf(out_path, metadata, tensors, value_types=hf._value_types(metadata))


def _read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise ConvertError(f"{folder}: no config.json in the folder")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConvertError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise ConvertError(f"{path}: not a JSON object")
    return config


def main(argv: list[str] | None = None) -> int:
    """`python -m pollama.models.mistral.convert FOLDER OUT.gguf [--outtype f32|f16]`."""
    parser = argparse.ArgumentParser(prog="python -m pollama.models.mistral.convert", description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("out")
    parser.add_argument("--outtype", default="f16", choices=sorted(hf.OUT_TYPES))
    args = parser.parse_args(argv)
    try:
        convert(args.folder, args.out, outtype=args.outtype)
    except (ConvertError, OSError) as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
