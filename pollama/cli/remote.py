"""Commands that talk to a server: serve, ps, stop, run (through the server at OLLAMA_HOST, or one
started in this process for the command), and the model commands when a server answers."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime

from pollama.cli.client import Client, ServerError
from pollama.cli.images import extract_images
from pollama.cli.models import human_bytes


def cmd_serve(args: argparse.Namespace) -> int:
    if getattr(args, "ray", False):
        from pollama.cluster.serve import serve_ray

        return serve_ray(args.config)
    if getattr(args, "config", None):
        from pollama.cli.main import CLIError

        raise CLIError("--config is the configuration of a Ray cluster: use it with --ray")
    from pollama.server.serve import serve

    return serve()


def until(expires_at: str, now: datetime | None = None) -> str:
    """ps's UNTIL column as Ollama's ps: "Stopping..." once the time has passed, else HumanTime
    ("4 minutes from now", "Forever" for a model kept loaded for good)."""
    from pollama.cli.models import human_time

    try:
        then = datetime.fromisoformat(expires_at)
    except ValueError:
        return expires_at
    now = now or datetime.now(UTC)
    return "Stopping..." if now > then else human_time(then, "Never", now)


def cmd_version(args: argparse.Namespace) -> int:
    """`pollama -v`: the server's version, and this client's where it differs or no server
    answers (Ollama's wording)."""
    from pollama import version

    ours = version()
    try:
        with Client(timeout=5) as client:
            theirs = (client.request("GET", "/api/version") or {}).get("version", "")
    except ServerError:
        print("Warning: could not connect to a running pollama instance")
        print(f"Warning: client version is {ours}")
        return 0
    print(f"pollama version is {theirs}")
    if theirs != ours:
        print(f"Warning: client version is {ours}")
    return 0


def processor(size: int, size_vram: int) -> str:
    """ps's PROCESSOR column from /api/ps's size and size_vram, worded as Ollama's CLI does."""
    if size_vram == 0:
        return "100% CPU"
    if size_vram == size:
        return "100% GPU"
    if size_vram > size or size == 0:
        return "Unknown"
    cpu = int((size - size_vram) * 100 / size + 0.5)  # Go's math.Round: halves up, not to even
    return f"{cpu}%/{100 - cpu}% CPU/GPU"


def cmd_ps(args: argparse.Namespace) -> int:
    with Client() as client:
        models = client.request("GET", "/api/ps")["models"]
    rows = [["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]]
    for m in models:
        rows.append([m["name"], m.get("digest", "")[:12], human_bytes(m.get("size", 0)),
                     processor(m.get("size", 0), m.get("size_vram", 0)),
                     str(m.get("context_length", "")), until(m.get("expires_at", ""))])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print("\n".join("    ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows))
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    with Client() as client:
        client.request("POST", "/api/generate", {"model": args.model, "keep_alive": 0})
    return 0


@contextlib.contextmanager
def private_client(backend: str = "ggml", *, model_files: bool = False) -> Iterator[Client]:
    """A client of the server's own app started in this process for one command
    (pollama.server.serve.serve_privately): the same routes, scheduler and runner processes as
    `pollama serve`, on the backend given (model_files: also taking a GGUF file's path as a
    model name, for `run`)."""
    from pollama.server.config import ServerConfig
    from pollama.server.serve import serve_privately

    config = replace(ServerConfig.from_env(), backend=backend, model_files=model_files)
    # SIGTERM (a `kill`, a closing session) ends the command as Ctrl+C does: by unwinding, so
    # that the server stops its runner and removes its socket's directory on the way out.
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        with serve_privately(config) as path, Client(socket_path=str(path)) as client:
            yield client
    finally:
        signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signal.SIGTERM)


def run_remote(client: Client, args: argparse.Namespace, prompt: str, options: dict, raw: bool = False) -> int:
    """`run MODEL PROMPT` through the server's /api/chat (raw: /api/generate with the prompt as the
    model's input, for a GGUF given by its path), printing the answer as `ollama run` does: a
    spinner on stderr until the first words, the thinking set apart, words wrapped on a terminal."""
    from pollama.cli.display import AnswerPrinter, Spinner, is_terminal
    from pollama.cli.main import think_value

    spinner = Spinner()
    try:
        capabilities = model_capabilities(client, args.model)
        content, images = prompt, []
        if "vision" in capabilities:
            content, images, notes = extract_images(prompt)
            for note in notes:
                spinner.stop()
                print(note, file=sys.stderr)
        if raw:
            path, body = "/api/generate", {"model": args.model, "prompt": content, "raw": True}
            if images:
                body["images"] = images
        else:
            message: dict = {"role": "user", "content": content}
            if images:
                message["images"] = images
            path, body = "/api/chat", {"model": args.model, "messages": [message]}
        body["options"] = options
        think = think_value(getattr(args, "think", None))
        if think is None and "thinking" in capabilities:
            think = True  # as Ollama's CLI: a model that thinks does, unless told not to
        if think is not None:
            body["think"] = think
        if getattr(args, "keepalive", None):
            body["keep_alive"] = args.keepalive
        if getattr(args, "format", None):
            body["format"] = args.format
        started = time.perf_counter_ns()
        final = None
        terminal = is_terminal(sys.stdout)
        printer = AnswerPrinter(sys.stdout, wrap=terminal and not getattr(args, "nowordwrap", False),
                                hide_thinking=getattr(args, "hidethinking", False), plain=not terminal, spinner=spinner)
        for chunk in client.stream(path, body):
            if chunk.get("done"):
                final = chunk
            elif raw:
                printer.add(chunk.get("response", ""), chunk.get("thinking", ""))
            else:
                printer.add(chunk["message"].get("content", ""), chunk["message"].get("thinking", ""))
        printer.close()
    finally:
        spinner.stop()
    sys.stdout.write("\n")
    if args.verbose and final is not None:
        from pollama.cli.main import print_timings

        print_timings(final, final.get("total_duration") or time.perf_counter_ns() - started, final.get("load_duration", 0))
    return 0


def model_capabilities(client: Client, model: str) -> list[str]:
    """What the server says the model can do ("vision": image paths in prompts are read;
    "thinking": the CLI asks it to think); none when it cannot say (the chat request will)."""
    try:
        info = client.request("POST", "/api/show", {"model": model})
    except ServerError:
        return []
    return list(info.get("capabilities") or [])


# -- model management through the server (as Ollama's CLI does) ---------------------------------
def list_remote(client: Client, args: argparse.Namespace) -> int:
    from pollama.cli.models import _table, human_time

    rows = [["NAME", "ID", "SIZE", "MODIFIED"]]
    for m in client.request("GET", "/api/tags")["models"]:
        modified = datetime.fromisoformat(m["modified_at"])
        rows.append([m["name"], m["digest"][:12], human_bytes(m["size"]), human_time(modified)])
    print(_table(rows))
    return 0


def cp_remote(client: Client, args: argparse.Namespace) -> int:
    client.request("POST", "/api/copy", {"source": args.source, "destination": args.destination})
    print(f"copied '{args.source}' to '{args.destination}'")
    return 0


def rm_remote(client: Client, args: argparse.Namespace) -> int:
    for name in args.models:
        client.request("DELETE", "/api/delete", {"model": name})
        print(f"deleted '{name}'")
    return 0


def show_remote(client: Client, args: argparse.Namespace) -> int:
    from pollama.cli.models import _short, _table

    info = client.request("POST", "/api/show", {"model": args.model, "verbose": bool(args.verbose)})
    if args.modelfile:
        print(info.get("modelfile", ""), end="")
        return 0
    if args.parameters:
        print(info.get("parameters", ""))
        return 0
    if args.template:
        print(info.get("template") or "{{ .Prompt }}")
        return 0
    if args.system:
        print(info.get("system", ""))
        return 0
    if args.license:
        print(info.get("license", ""))
        return 0
    details, md = info.get("details") or {}, info.get("model_info") or {}
    arch = md.get("general.architecture", "")
    rows = [
        ["architecture", arch],
        ["parameters", details.get("parameter_size", "")],
        ["context length", str(md.get(f"{arch}.context_length", ""))],
        ["embedding length", str(md.get(f"{arch}.embedding_length", ""))],
        ["quantization", details.get("quantization_level", "")],
    ]
    sections = [("Model", _table(rows, "    "))]
    sections.append(("Capabilities", "\n".join("    " + c for c in info.get("capabilities") or [])))
    if info.get("parameters"):
        lines = [line.split(None, 1) for line in info["parameters"].splitlines() if line.strip()]
        sections.append(("Parameters", _table([[k, v] for k, v in lines], "    ")))
    if info.get("system"):
        sections.append(("System", "\n".join("    " + line for line in info["system"].splitlines()[:2])))
    if info.get("license"):
        sections.append(("License", "\n".join("    " + line for line in info["license"].splitlines()[:2])))
    if args.verbose:
        sections.append(("Metadata", _table([[k, _short(v)] for k, v in md.items()], "    ")))
    print("\n\n".join(f"  {title}\n{body}" for title, body in sections) + "\n")
    return 0


# Files of a Hugging Face folder that create reads (weights, configs, tokenizers).
_UPLOAD_SUFFIXES = (".safetensors", ".json", ".txt", ".model", ".bin", ".pth", ".gguf", ".tiktoken", ".jinja")


def _upload(client: Client, path) -> str:
    """Send a file to /api/blobs unless the server has it; its digest."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    digest = "sha256:" + h.hexdigest()
    try:
        response = client.http.head(f"/api/blobs/{digest}")
        if response.status_code == 200:
            return digest

        def body():
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    yield chunk

        response = client.http.post(f"/api/blobs/{digest}", content=body())
    except Exception as e:  # noqa: BLE001 - any transport failure is one line for the user
        raise ServerError(f"uploading {path}: {e}") from None
    if response.status_code >= 400:
        raise client._error_of(response)
    return digest


def _files_of(client: Client, path) -> dict[str, str]:
    from pathlib import Path

    path = Path(path)
    if path.is_file():
        return {path.name: _upload(client, path)}
    files = {}
    for f in sorted(path.rglob("*")):
        if f.is_file() and f.suffix in _UPLOAD_SUFFIXES and not any(p.startswith(".") for p in f.relative_to(path).parts):
            files[str(f.relative_to(path))] = _upload(client, f)
    if not files:
        raise ServerError(f"{path}: no model files to upload")
    return files


def create_remote(client: Client, args: argparse.Namespace) -> int:
    """Parse the Modelfile here, upload what FROM, ADAPTER and DRAFT name, and let the server create."""
    from pathlib import Path

    from pollama.create.modelfile import parse_modelfile

    path = Path(args.file)
    if path.is_file():
        modelfile, base = parse_modelfile(path.read_bytes()), path.parent
    elif args.file == "Modelfile" and not path.exists():
        modelfile, base = parse_modelfile("FROM ."), Path(".")
    else:
        raise ValueError(f"{args.file}: no such Modelfile")
    froms = modelfile.froms
    if len(froms) != 1:
        raise ValueError("a Modelfile needs exactly one FROM" if not froms else "more than one FROM is not supported")

    def local(path: str) -> Path:
        full = Path(path).expanduser()
        return full if full.is_absolute() else base / full

    body: dict = {"model": args.model, "stream": True}
    source = local(froms[0])
    if not source.exists() and froms[0].startswith((".", "/", "~")):  # a path, not a model's name
        raise ValueError(f"{froms[0]}: no such file or folder")
    for adapter in modelfile.adapters:  # each checked before anything is sent
        if not local(adapter).exists():
            raise ValueError(f"ADAPTER {adapter}: no such file")
    if source.exists():
        print("gathering model components", flush=True)
        body["files"] = _files_of(client, source)
    else:
        body["from"] = froms[0]
    adapters = {}
    for adapter in modelfile.adapters:
        adapters.update(_files_of(client, local(adapter)))
    if adapters:
        body["adapters"] = adapters
    if modelfile.drafts:
        draft = modelfile.drafts[-1]
        draft_path = local(draft)
        if draft_path.exists():
            body["draft_files"] = _files_of(client, draft_path)
        else:
            body["draft"] = draft
    for key in ("template", "system", "renderer", "parser"):
        value = getattr(modelfile, key)
        if value is not None:
            body[key] = value
    if modelfile.parameters:
        body["parameters"] = modelfile.parameters
    if modelfile.license:
        body["license"] = modelfile.license
    if modelfile.messages:
        body["messages"] = modelfile.messages
    if args.quantize:
        body["quantize"] = args.quantize
    for message in client.stream("/api/create", body):
        print(message.get("status", ""), flush=True)
    return 0


def through_a_server(command, say: str):
    """A command through the server at OLLAMA_HOST when one answers, else through the same server
    started in this process for it (private_client): one implementation either way. Without a
    server it says so on stderr in one line once the command is done, so that an error the
    command meets stays the one line the user reads."""
    def run(args: argparse.Namespace) -> int:
        client = Client()
        if client.is_running():
            with client:
                return command(client, args)
        with private_client() as here:
            code = command(here, args)
        from pollama.cli.main import say_in_process

        say_in_process(client.base_url, say)
        return code

    return run


def _transfer_remote(client: Client, args: argparse.Namespace, path: str) -> int:
    """pull or push through the server, drawing its progress as Ollama's CLI does."""
    from pollama.cli.registry import show_transfer

    def stream(printer) -> None:
        for update in client.stream(path, {"model": args.model, "insecure": args.insecure, "stream": True}):
            printer(update)

    return show_transfer(stream)


def pull_remote(client: Client, args: argparse.Namespace) -> int:
    return _transfer_remote(client, args, "/api/pull")


def push_remote(client: Client, args: argparse.Namespace) -> int:
    return _transfer_remote(client, args, "/api/push")
