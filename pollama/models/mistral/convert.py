"""HF MistralForCausalLM -> GGUF "mistral" (Llama's layout plus the sliding window), on request.

`pollama create` converts MistralForCausalLM to "llama", as Ollama and llama.cpp do, so that the
file runs everywhere; that drops the window (see models/llama/convert.py). This converter is the
opt-in: `python -m pollama.models.mistral.convert FOLDER OUT.gguf`, or `convert(folder, out)`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pollama.models.convert import OUT_TYPES, ConvertError, convert_folder
from pollama.models.llama.convert import LlamaConverter


class MistralConverter(LlamaConverter):
    arch = "mistral"
    architectures = ("MistralForCausalLM",)

    def metadata(self) -> dict:
        c = self.cfg
        self.check_activation("hidden_act", ("silu",), "silu")
        rope = c.rope()
        if rope["rope_type"] == "llama3":
            raise ConvertError("config.json rope scaling 'llama3' is Llama 3.1's, not Mistral's")
        md = self.decoder_metadata(default_eps=1e-6, default_ctx=32768, rope=rope)  # MistralConfig's defaults
        md["rope.dimension_count"] = self.head_dim()
        window = c.get("sliding_window")
        if window is not None:
            if not isinstance(window, int) or isinstance(window, bool) or window <= 0:
                raise ConvertError(f"config.json sliding_window must be a positive integer, got {window!r}")
            md["attention.sliding_window"] = window
        return md


# No CONVERTERS: `create` converts MistralForCausalLM with LlamaConverter, to "llama".


def convert(folder: str | Path, out_path: str | Path, progress=None, *, outtype: str = "f16") -> None:
    """Convert a MistralForCausalLM folder to a GGUF "mistral" file; ConvertError (one line) if it cannot be."""
    convert_folder(folder, out_path, MistralConverter, progress, outtype=outtype)


def main(argv: list[str] | None = None) -> int:
    """`python -m pollama.models.mistral.convert FOLDER OUT.gguf [--outtype f32|f16]`."""
    parser = argparse.ArgumentParser(prog="python -m pollama.models.mistral.convert", description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("out")
    parser.add_argument("--outtype", default="f16", choices=sorted(OUT_TYPES))
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
