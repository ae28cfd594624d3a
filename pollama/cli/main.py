"""The `pollama` command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from pollama import envconfig
from pollama.store.embedded import EMBEDDED_MODELS, embedded_model_path


class CLIError(Exception):
    """An error to print as one line, exiting non-zero."""


def resolve_model(name: str) -> Path:
    """A GGUF path from a file path, an embedded PyPI model, or a model in the store."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    if path.exists():
        raise CLIError(f"{name}: not a regular file")
    from pollama.store.store import Store

    store = Store()
    try:
        if store.exists(name):
            resolved = store.resolve(name)
            if resolved.model_path is None:
                raise CLIError(f"model {name!r} has no weights pollama can run")
            return resolved.model_path
    except ValueError as e:
        if name not in EMBEDDED_MODELS:
            raise CLIError(str(e)) from None
    if name in EMBEDDED_MODELS:
        return embedded_model_path(name)
    known = ", ".join(EMBEDDED_MODELS)
    raise CLIError(f"model {name!r} not found: give a GGUF file, a model created with `pollama create`, or one of {known}")


def _format_duration(ns: int) -> str:
    seconds = ns / 1e9
    if seconds >= 1:
        return f"{seconds:.6f}s"
    return f"{seconds * 1e3:.6f}ms"


def print_timings(done, total_ns: int, load_ns: int) -> None:
    """The --verbose lines, in `ollama run --verbose`'s order; done is a Done or an API final object."""
    def get(name: str) -> int:
        return done[name] if isinstance(done, dict) else getattr(done, name)

    def rate(count: int, ns: int) -> str:
        return f"{count / (ns / 1e9):.2f} tokens/s" if ns > 0 else "n/a"

    err = sys.stderr
    print(f"total duration:       {_format_duration(total_ns)}", file=err)
    print(f"load duration:        {_format_duration(load_ns)}", file=err)
    print(f"prompt eval count:    {get('prompt_eval_count')} token(s)", file=err)
    print(f"prompt eval duration: {_format_duration(get('prompt_eval_duration'))}", file=err)
    print(f"prompt eval rate:     {rate(get('prompt_eval_count'), get('prompt_eval_duration'))}", file=err)
    print(f"eval count:           {get('eval_count')} token(s)", file=err)
    print(f"eval duration:        {_format_duration(get('eval_duration'))}", file=err)
    print(f"eval rate:            {rate(get('eval_count'), get('eval_duration'))}", file=err)
    # pollama's own line: how many of the speculative draft tokens the model agreed with.
    drafted = done.get("draft_count", 0) if isinstance(done, dict) else getattr(done, "draft_count", 0)
    if drafted:
        accepted = done.get("draft_accepted_count", 0) if isinstance(done, dict) else done.draft_accepted_count
        print(f"draft accept rate:    {accepted / drafted:.2%} ({accepted} of {drafted} draft tokens)", file=err)


def run_flags(args: argparse.Namespace) -> dict:
    flags = {
        "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p, "min_p": args.min_p,
        "repeat_penalty": args.repeat_penalty, "seed": args.seed, "num_ctx": args.num_ctx,
        "num_thread": args.num_thread, "num_predict": args.num_predict, "stop": args.stop,
    }
    return {k: v for k, v in flags.items() if v is not None}


THINK_VALUES = {"": True, "true": True, "false": False, "high": "high", "medium": "medium", "low": "low", "max": "max"}


def think_value(flag: str | None):
    """--think's value as the API's `think`: None when not given, True/False or a level (Ollama's words on a bad one)."""
    if flag is None:
        return None
    if flag not in THINK_VALUES:
        raise CLIError(f"invalid value for --think: {flag!r} (must be true, false, high, medium, low, or max)".replace("'", '"'))
    return THINK_VALUES[flag]


def read_prompt(args: argparse.Namespace) -> str | None:
    """The prompt as Ollama's run joins it: piped stdin (when there is any) first, then the
    prompt arguments, joined by spaces; None when neither is given (an interactive chat)."""
    prompts = list(args.prompt)
    if not sys.stdin.isatty():
        piped = sys.stdin.read()
        if piped:
            prompts.insert(0, piped)
        elif not prompts:
            return ""
    return " ".join(prompts) if prompts else None


def say_in_process(url: str, command: str) -> None:
    """The one stderr line a command that found no server prints before doing its work here."""
    print(f"Warning: could not connect to a pollama server at {url}; running {command} in this process "
          "(start one with 'pollama serve')", file=sys.stderr)


def cmd_run(args: argparse.Namespace) -> int:
    """Through the server at OLLAMA_HOST when one answers, else through the same server started
    in this process for this command (pollama.server.serve.serve_privately): one pipeline either
    way. A GGUF given by its path, or --backend torch, is always run here (a server would not)."""
    from pollama.cli.client import Client
    from pollama.cli.remote import private_client

    is_file = Path(args.model).expanduser().exists()
    think_value(args.think)  # a bad value is an error before anything loads
    prompt = read_prompt(args)
    if not is_file and args.backend == "ggml":
        client = Client()
        if client.is_running():
            with client:
                return run_with(client, args, prompt)
        with private_client(args.backend, model_files=True) as here:
            here.request("POST", "/api/show", {"model": args.model})  # a model that is not there: only that error
            say_in_process(client.base_url, "the model")
            return run_with(here, args, prompt)
    with private_client(args.backend, model_files=True) as here:
        return run_with(here, args, prompt, raw=is_file)


def run_with(client, args: argparse.Namespace, prompt: str | None, raw: bool = False) -> int:
    """`run` through a client: the interactive chat on a terminal when no prompt is given, just
    the load for an empty one, else the one answer (raw: the prompt is the model's input as it is)."""
    if prompt is None and sys.stdout.isatty():
        from pollama.cli.repl import repl

        return repl(client, args)
    if not prompt:  # nothing to ask (no words, empty stdin, no terminal): load it, as Ollama does
        client.request("POST", "/api/generate", {"model": args.model, **({"keep_alive": args.keepalive} if args.keepalive else {})})
        return 0
    from pollama.cli.remote import run_remote

    return run_remote(client, args, prompt, run_flags(args), raw=raw)


def _load_tokenizer(name: str):
    from pollama.fs.gguf import GGUFFile
    from pollama.tokenizer import load_tokenizer

    with GGUFFile(resolve_model(name)) as gguf:
        return load_tokenizer(gguf.metadata)


def cmd_tokenize(args: argparse.Namespace) -> int:
    tokenizer = _load_tokenizer(args.model)
    special = dict(add_special=not args.no_add_special, parse_special=not args.no_parse_special)
    if not args.jsonl:
        print(json.dumps(tokenizer.encode(sys.stdin.read(), **special)))
        return 0
    for number, line in enumerate(sys.stdin, 1):
        if not line.strip():
            continue
        try:
            text = json.loads(line)
        except json.JSONDecodeError as e:
            raise CLIError(f"stdin line {number}: not JSON ({e.msg})") from None
        if not isinstance(text, str):
            raise CLIError(f"stdin line {number}: expected a JSON string, got {type(text).__name__}")
        print(json.dumps(tokenizer.encode(text, **special)), flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pollama", description="Ollama's engine, in Python, on GGML.")
    parser.add_argument("-v", "--version", action="store_true", help="show the server's and this client's version")
    sub = parser.add_subparsers(dest="command")

    run = sub.add_parser("run", help="run a model: the prompt as a chat message (raw text for a GGUF file path)")
    run.add_argument("model", help="a GGUF file, or an embedded model: " + ", ".join(EMBEDDED_MODELS))
    run.add_argument("prompt", nargs="*", help="the prompt (words joined by spaces, after piped stdin if any)")
    run.add_argument("--verbose", action="store_true", help="print timings after the response")
    run.add_argument("--think", metavar="true|false|high|medium|low", nargs="?", const="true",
                     help="thinking for models that think: --think alone is true (default: on where the model thinks)")
    run.add_argument("--hidethinking", action="store_true", help="do not print the thinking (the model still thinks)")
    run.add_argument("--nowordwrap", action="store_true", help="don't wrap words to the next line at the terminal width")
    run.add_argument("--backend", default="ggml", choices=["ggml", "torch"])
    run.add_argument("--num-ctx", type=int, help=f"context length (default OLLAMA_CONTEXT_LENGTH or {envconfig.DEFAULT_NUM_CTX}, or the model's num_ctx)")
    run.add_argument("--num-thread", type=int)
    run.add_argument("--num-predict", type=int, help="tokens to generate at most (default -1: until the model ends, or the context is full)")
    run.add_argument("--temperature", type=float)
    run.add_argument("--top-k", type=int)
    run.add_argument("--top-p", type=float)
    run.add_argument("--min-p", type=float)
    run.add_argument("--repeat-penalty", type=float)
    run.add_argument("--seed", type=int)
    run.add_argument("--stop", action="append", help="a stop string (repeatable)")
    run.add_argument("--keepalive", help="how long the server keeps the model loaded (e.g. 5m)")
    run.add_argument("--format", help="response format (e.g. json)")
    run.set_defaults(func=cmd_run)

    from pollama.cli import remote

    serve = sub.add_parser("serve", help="start the server (Ollama's API and OpenAI's) on $OLLAMA_HOST")
    serve.add_argument("--ray", action="store_true",
                       help="serve as a Ray Serve application: model replicas on a Ray cluster (docs/scaling.md)")
    serve.add_argument("--config", help="with --ray: the cluster's models and replicas (a TOML file)")
    serve.set_defaults(func=remote.cmd_serve)
    sub.add_parser("ps", help="list running models").set_defaults(func=remote.cmd_ps)
    stop = sub.add_parser("stop", help="stop a running model")
    stop.add_argument("model")
    stop.set_defaults(func=remote.cmd_stop)
    from pollama.cli import registry

    # The model commands are the server's clients, as Ollama's: through the server at OLLAMA_HOST,
    # else through the same server started in this process for the one command.
    registry.add_registry_parsers(sub)
    sub.choices["pull"].set_defaults(func=remote.through_a_server(remote.pull_remote, say="pull on the store"))
    sub.choices["push"].set_defaults(func=remote.through_a_server(remote.push_remote, say="push on the store"))

    create = sub.add_parser("create", help="create a model from a Modelfile")
    create.add_argument("model")
    create.add_argument("-f", "--file", default="Modelfile", help="the Modelfile (default ./Modelfile)")
    create.add_argument("-q", "--quantize", help="quantize the weights, e.g. q4_K_M, q8_0")
    create.set_defaults(func=remote.through_a_server(remote.create_remote, say="create on the store"))

    show = sub.add_parser("show", help="show a model's information")
    show.add_argument("model")
    for flag in ("--modelfile", "--parameters", "--template", "--system", "--license"):
        show.add_argument(flag, action="store_true")
    show.add_argument("-v", "--verbose", action="store_true", help="also list the GGUF metadata")
    show.set_defaults(func=remote.through_a_server(remote.show_remote, say="show on the store"))

    for alias in ("list", "ls"):
        sub.add_parser(alias, help="list models").set_defaults(
            func=remote.through_a_server(remote.list_remote, say="list on the store"))

    cp = sub.add_parser("cp", help="copy a model")
    cp.add_argument("source")
    cp.add_argument("destination")
    cp.set_defaults(func=remote.through_a_server(remote.cp_remote, say="cp on the store"))

    rm = sub.add_parser("rm", help="remove models")
    rm.add_argument("models", nargs="+")
    rm.set_defaults(func=remote.through_a_server(remote.rm_remote, say="rm on the store"))

    # tensors, tokenize and compare read a model's files (a path, an embedded model, or a stored
    # model's GGUF, read-only) and answer nothing a server does (compare runs the forward pass
    # itself, recording its intermediates): they need no server, and always work here.
    from pollama.cli import models

    tensors = sub.add_parser("tensors", help="list the tensors of a GGUF, safetensors or PyTorch checkpoint")
    tensors.add_argument("path")
    tensors.add_argument("--json", action="store_true", help="one JSON list of {name, shape, dtype}")
    tensors.set_defaults(func=models.cmd_tensors)

    from pollama.cli.compare import add_compare_parser

    add_compare_parser(sub)

    tok = sub.add_parser("tokenize", help="print the token ids of stdin as a JSON list")
    tok.add_argument("model", help="a GGUF file (a vocab-only one will do) or an embedded model")
    tok.add_argument("--no-add-special", action="store_true", help="do not add BOS/EOS")
    tok.add_argument("--no-parse-special", action="store_true", help="tokenize special-token text as plain text")
    tok.add_argument("--jsonl", action="store_true", help="each stdin line is a JSON string; print one list per line")
    tok.set_defaults(func=cmd_tokenize)

    help_ = sub.add_parser("help", help="help about a command")
    help_.add_argument("topic", nargs="?", choices=sorted(sub.choices), metavar="COMMAND", help="the command")
    help_.set_defaults(func=lambda args: print_help(parser, sub, args.topic))
    return parser


def print_help(parser: argparse.ArgumentParser, commands, topic: str | None) -> int:
    """`pollama help [COMMAND]`: the usage of the command, or of pollama (as `ollama help` does)."""
    (commands.choices[topic] if topic else parser).print_help()
    return 0


def parse_args(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Flags anywhere on the line, as Ollama's (cobra's) CLI takes them: `run smollm2 --verbose hi`
    and options after the prompt. A bare `--think` never takes the next word as its value
    (cobra's NoOptDefVal): it is --think=true."""
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    at = next((i for i, word in enumerate(argv) if not word.startswith("-")), None)
    if at is None or argv[at] not in commands:
        return parser.parse_args(argv)
    name, rest = argv[at], argv[at + 1:]
    if name == "run":
        rest = [("--think=true" if word == "--think" else word) for word in rest]
    args = parser.parse_args(argv[:at])  # the global flags, before the command
    try:
        args = commands[name].parse_intermixed_args(rest, namespace=args)
    except TypeError:  # a command argparse cannot intermix (one with commands of its own)
        return parser.parse_args(argv)
    args.command = name
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `pollama` console script."""
    parser = build_parser()
    args = parse_args(parser, sys.argv[1:] if argv is None else list(argv))
    if args.version:
        from pollama.cli.remote import cmd_version

        return cmd_version(args)
    if args.command is None:
        parser.error("the following arguments are required: command")
    from pollama.cli.client import ServerError
    from pollama.errors import debug_enabled, user_errors

    # Library warnings (e.g. a GGUF without a pre-tokenizer name) are for developers.
    logging.basicConfig(level=logging.DEBUG if debug_enabled() else logging.ERROR, format="%(levelname)s %(name)s: %(message)s")

    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `| head`); say nothing more.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (CLIError, ServerError, *user_errors()) as e:
        message = str(e).strip() or type(e).__name__
        print(f"Error: {message}", file=sys.stderr)
        return 1
    except RecursionError:
        # A file or answer nested deeper than the stack (readers name what they can).
        if debug_enabled():
            raise
        print("Error: input nested too deeply to read", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
