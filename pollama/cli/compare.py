"""`pollama compare MODEL [REFERENCE]`: our forward pass against transformers', tensor by tensor.

With a REFERENCE (a Hugging Face checkpoint folder) it prints one row per recorded tensor
(max abs diff, relative error, cosine), names the first tensor past the tolerance and exits 1
when there is one. Without, it prints our recorded tensors' statistics (the debug dump).
"""

from __future__ import annotations

import argparse
import sys

DEFAULT_PROMPT = "The quick brown fox jumps over the lazy dog"


def add_compare_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `compare` command to the `pollama` subcommands."""
    p = subparsers.add_parser(
        "compare", help="compare a model layer by layer with its Hugging Face reference (or dump its intermediates)")
    p.add_argument("model", help="a GGUF file, a model created with `pollama create`, or an embedded model")
    p.add_argument("reference", nargs="?", help="the Hugging Face checkpoint folder it was converted from")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="text to run, tokenized by the model (default: %(default)r)")
    p.add_argument("--tokens", help="comma-separated token ids to run instead of --prompt")
    p.add_argument("--image", metavar="FILE",
                   help="an image for a vision model: its tower is compared too ([img-0] in --prompt places it, else first)")
    p.add_argument("--backend", default="ggml", choices=["ggml", "torch"])
    p.add_argument("--rtol", type=float, help="relative error allowed per tensor (default: by backend and weight type)")
    p.add_argument("--dump", metavar="FILE", help="save our recorded tensors to FILE (.npz or .safetensors)")
    p.add_argument("--last-row", action="store_true", help="record only the last token's row (default: every token's)")
    p.add_argument("--num-thread", type=int)
    p.set_defaults(func=cmd_compare)
    return p


class CompareUsageError(ValueError):
    """A bad argument to `pollama compare` (printed as one line)."""


def parse_tokens(text: str) -> list[int]:
    """Token ids from "1,2,3" (spaces allowed)."""
    try:
        tokens = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise CompareUsageError(f"--tokens must be comma-separated integers, got {text!r}") from None
    if not tokens:
        raise CompareUsageError("--tokens is empty")
    return tokens


def cmd_compare(args: argparse.Namespace) -> int:
    """Run the comparison (or the dump) and return the exit code: 1 when the model diverges."""
    from pollama.cli.main import resolve_model
    from pollama.debug.record import prompt_tokens, record_forward

    if args.rtol is not None and not args.rtol > 0:
        raise CompareUsageError(f"--rtol must be positive, got {args.rtol}")
    if args.dump and not args.dump.endswith((".npz", ".safetensors")):
        raise CompareUsageError(f"--dump {args.dump}: the file must end in .npz or .safetensors")
    if args.last_row and args.reference:
        raise CompareUsageError("--last-row is for a dump: a comparison looks at every token")
    path = resolve_model(args.model)
    image = prompt = None
    if args.image:
        if args.tokens:
            raise CompareUsageError("--image goes with --prompt (its [img-0] tag places the image), not --tokens")
        try:
            with open(args.image, "rb") as f:
                image = f.read()
        except OSError as e:
            raise CompareUsageError(f"--image {args.image}: {e.strerror or e}") from None
        prompt = args.prompt if "[img-0]" in args.prompt else "[img-0]" + args.prompt
        tokens = []
    else:
        tokens = parse_tokens(args.tokens) if args.tokens else prompt_tokens(path, args.prompt)

    if args.reference is None:
        recording = record_forward(path, tokens, args.backend, all_rows=not args.last_row, num_thread=args.num_thread,
                                   image=image, prompt=prompt)
        tokens = recording.tokens
        print(f"{recording.arch}: {len(tokens)} tokens {tokens}")
        width = max(len(name) for name in recording.values)
        for name, stats in recording.stats():
            print(f"{name:<{width}}  {stats}")
        if args.dump:
            print(f"saved {len(recording.values)} tensors to {recording.save(args.dump)}")
        return 0 if all("NOT FINITE" not in stats for _, stats in recording.stats()) else 1

    from pollama.debug.compare import compare_model

    report, recording = compare_model(path, args.reference, tokens, args.backend, args.rtol, args.num_thread,
                                      image=image, prompt=prompt)
    tokens = recording.tokens
    print(f"{recording.arch} on {args.backend}, {len(tokens)} tokens {tokens}")
    print(report.table())
    if report.missing:
        print(f"not in the reference: {', '.join(report.missing)}")
    if args.dump:
        print(f"saved {len(recording.values)} tensors to {recording.save(args.dump)}")
    print(report.verdict(), file=sys.stderr if report.diverges else sys.stdout)
    return 1 if report.diverges else 0


def main(argv: list[str] | None = None) -> int:
    """`python -m pollama.cli.compare ...`: the same command, before `pollama compare` is wired in."""
    import logging

    from pollama.cli.main import CLIError
    from pollama.errors import debug_enabled, user_errors

    parser = argparse.ArgumentParser(prog="pollama")
    add_compare_parser(parser.add_subparsers())
    args = parser.parse_args(["compare", *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(level=logging.DEBUG if debug_enabled() else logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (CLIError, *user_errors()) as e:
        print(f"Error: {str(e).strip() or type(e).__name__}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
