"""Ollama's model management routes: /api/tags, /api/show, /api/copy, /api/delete,
/api/create (with the blob uploads it builds on), /api/pull, /api/push and /api/ps.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from pollama.server.chat import check_messages
from pollama.server.common import State, model_name, ndjson_or_single
from pollama.server.errors import APIError
from pollama.server.generate import in_thread
from pollama.server.http import ClientGone, field, json_response, read_json, rfc3339
from pollama.server.models import ModelRef, full_metadata
from pollama.store.errors import DigestMismatch, InvalidName, ModelNotFound, StoreError
from pollama.store.manifest import check_digest
from pollama.store.store import Store

log = logging.getLogger(__name__)


def add_model_routes(app: FastAPI, state: State) -> None:
    """Mount the model management routes on app."""

    @app.api_route("/api/tags", methods=["GET", "HEAD"])
    async def api_tags() -> Response:
        deployed = state.scheduler.deployed()
        if deployed is not None:
            return json_response({"models": [_tag(m) for m in deployed]})
        return json_response({"models": await in_thread(list_models, state.store)})

    @app.post("/api/show")
    async def api_show(request: Request) -> Response:
        body = await read_json(request)
        name = model_name(body)
        try:
            model = await state.resolve(name)
        except APIError as e:
            if e.status == 404:  # show words it its own way in Ollama
                raise APIError(404, f"model '{name}' not found") from None
            raise
        return json_response(await in_thread(show_model, model, bool(field(body, "verbose", bool, False))))

    @app.post("/api/copy")
    async def api_copy(request: Request) -> Response:
        body = await read_json(request)
        source = field(body, "source", str, "")
        destination = field(body, "destination", str, "")
        if not source or not destination:
            raise APIError(400, "source and destination are required")
        try:
            await in_thread(state.store.copy, source, destination)
        except ModelNotFound:
            raise APIError(404, f'model "{source}" not found') from None
        except (InvalidName, StoreError) as e:
            raise APIError(400, str(e)) from None
        return Response(status_code=200)

    @app.delete("/api/delete")
    async def api_delete(request: Request) -> Response:
        body = await read_json(request)
        name = model_name(body)
        if not isinstance(name, str) or not name:
            raise APIError(400, "model is required")
        try:
            canonical = await in_thread(state.store.canonical_name, name)
            await state.scheduler.unload(canonical.display)
            await in_thread(state.store.remove, name)
        except ModelNotFound:
            raise APIError(404, f"model '{name}' not found") from None
        except InvalidName:
            raise APIError(400, f'name "{name}" is invalid') from None
        except StoreError as e:
            raise APIError(400, str(e)) from None
        return Response(status_code=200)

    @app.post("/api/create")
    async def api_create(request: Request) -> Response:
        body = await read_json(request)
        return await create_response(state, request, body)

    @app.api_route("/api/blobs/{digest}", methods=["HEAD"])
    async def blob_exists(digest: str) -> Response:
        try:
            check_digest(digest)
        except (StoreError, ValueError) as e:
            raise APIError(400, str(e)) from None
        return Response(status_code=200 if state.store.has_blob(digest) else 404)

    @app.post("/api/blobs/{digest}")
    async def blob_upload(digest: str, request: Request) -> Response:
        try:
            check_digest(digest)
        except (StoreError, ValueError) as e:
            raise APIError(400, str(e)) from None
        reader = _BodyReader(request, asyncio.get_running_loop())
        try:
            await in_thread(state.store.write_blob, reader, digest)
        except DigestMismatch as e:
            raise APIError(400, str(e)) from None
        except ClientGone:
            raise
        except OSError as e:
            # The store removed its partial file. The client is still sending: take the rest
            # of the body first, or it would see a reset connection instead of the answer.
            await reader.drain()
            log.warning("blob upload %s failed: %s", digest, e)
            status = 507 if e.errno in (errno.ENOSPC, errno.EDQUOT) else 500
            raise APIError(status, f"cannot store blob {digest}: {e.strerror or e}") from None
        state.uploads.add(digest)
        return Response(status_code=201)

    @app.post("/api/pull")
    async def api_pull(request: Request) -> Response:
        return await transfer_response(state, request, await read_json(request), "pull")

    @app.post("/api/push")
    async def api_push(request: Request) -> Response:
        return await transfer_response(state, request, await read_json(request), "push")

    @app.get("/api/ps")
    async def api_ps() -> Response:
        models = []
        for loaded in await state.scheduler.loaded_models():
            m = loaded.model
            # On the CPU alone the size is the model's; with layers on a device, the runner's
            # count of what it placed (weights and KV cache), size_vram the device's part.
            size_vram = loaded.size_vram
            size = loaded.placed_size if size_vram else m.size or _file_size(m.model_path)
            models.append({
                "name": m.name, "model": m.name, "size": size, "digest": m.digest,
                "details": m.details, "expires_at": rfc3339(loaded.until()), "size_vram": size_vram,
                "context_length": loaded.context_length,
            })
            if loaded.replica:  # in a cluster (pollama.cluster): which replica holds it
                models[-1]["replica"] = loaded.replica
        return json_response({"models": models})



def _tag(m: ModelRef) -> dict[str, Any]:
    """An /api/tags entry for a resolved model (list_models' fields)."""
    return {"name": m.name, "model": m.name, "modified_at": rfc3339(m.modified_at),
            "size": m.size or _file_size(m.model_path), "digest": m.digest, "details": m.details}


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


class _BodyReader:
    """A blocking read() over the request's body stream, for the store's hashing writer thread."""

    def __init__(self, request: Request, loop: asyncio.AbstractEventLoop):
        self.stream = request.stream().__aiter__()
        self.loop = loop
        self.buffer = b""
        self.ended = False

    async def drain(self) -> None:
        """Read and drop what is left of the body (after a failed write)."""
        self.buffer = b""
        with contextlib.suppress(Exception):
            while not self.ended:
                try:
                    await self.stream.__anext__()
                except StopAsyncIteration:
                    self.ended = True

    def read(self, n: int = -1) -> bytes:
        while not self.ended and (n < 0 or len(self.buffer) < n):
            try:
                chunk = asyncio.run_coroutine_threadsafe(self.stream.__anext__(), self.loop).result()
            except StopAsyncIteration:
                self.ended = True
                break
            except Exception as e:  # the client went away mid-upload
                raise ClientGone() from e
            self.buffer += chunk
        if n < 0:
            data, self.buffer = self.buffer, b""
        else:
            data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data


def list_models(store: Store) -> list[dict[str, Any]]:
    """/api/tags entries for every model in the store."""
    out = []
    for info in store.list():
        try:
            config = store.read_config(info.name, info.manifest)
        except (StoreError, OSError):
            config = {}
        family = config.get("model_family", "")
        out.append({
            "name": info.name.display, "model": info.name.display, "modified_at": rfc3339(info.modified_at),
            "size": info.size, "digest": info.digest,
            "details": {
                "parent_model": "", "format": config.get("model_format", "gguf"), "family": family,
                "families": config.get("model_families") or ([family] if family else None),
                "parameter_size": config.get("model_type", ""), "quantization_level": config.get("file_type", ""),
            },
        })
    return out


def show_model(model: ModelRef, verbose: bool) -> dict[str, Any]:
    """/api/show's answer."""
    from pollama.create.modelfile import format_modelfile
    from pollama.create.options import format_option_value

    params = []
    for key, value in model.params.items():
        for v in value if isinstance(value, list) else [value]:
            text = json.dumps(v) if isinstance(v, str) else format_option_value(v)
            params.append(f"{key:<30} {text}")
    info = full_metadata(model.model_path) if verbose else {
        k: (None if isinstance(v, list) and len(v) > 64 else v) for k, v in model.metadata.items()}
    answer: dict[str, Any] = {
        "license": "\n".join(model.license),
        "modelfile": format_modelfile(
            str(model.model_path), name=model.name, template=model.template, system=model.system,
            parameters=model.params, license=model.license, messages=model.messages, strict=False),
        "parameters": "\n".join(params),
        "template": model.template or "",
        "system": model.system or "",
        "details": model.details,
        "model_info": info,
        "capabilities": model.capabilities,
        "modified_at": rfc3339(model.modified_at),
    }
    for key in ("renderer", "parser"):
        if model.config.get(key):
            answer[key] = model.config[key]
    if model.messages:
        answer["messages"] = model.messages
    if verbose:
        from pollama.fs.gguf import GGUFFile

        with GGUFFile(model.model_path) as gguf:
            answer["tensors"] = [{"name": t.name, "type": t.type.name, "shape": list(t.ne)} for t in gguf.tensors.values()]
    return answer


# -- /api/pull and /api/push ----------------------------------------------------------------------
async def transfer_response(state: State, request: Request, body: dict[str, Any], verb: str) -> Response:
    """A pull or push through the registry client, its progress objects streamed as Ollama's."""
    from pollama.store import registry
    from pollama.store.names import ModelName

    name = model_name(body)
    if not isinstance(name, str) or not name:
        raise APIError(400, "model is required")
    try:
        ModelName.parse(name)
    except (InvalidName, ValueError):
        raise APIError(400, f'name "{name}" is invalid') from None
    insecure = field(body, "insecure", bool, False)
    stream = field(body, "stream", bool, True)
    transfer = registry.pull_model if verb == "pull" else registry.push_model

    async def events() -> AsyncIterator[dict[str, Any]]:
        updates = registry.transfer_events(transfer, state.store, name, insecure=insecure)
        try:
            async for update in updates:
                if "error" in update:
                    raise APIError(500, update["error"])
                yield update
        except registry.RegistryNotFound as e:
            raise APIError(404, str(e)) from None
        except ModelNotFound as e:
            raise APIError(404, str(e)) from None
        except (StoreError, OSError) as e:
            raise APIError(500, str(e)) from None
        finally:
            await updates.aclose()

    def combine(updates: list[dict[str, Any]]) -> dict[str, Any]:
        return {"status": "success"} if not updates else updates[-1]

    return await ndjson_or_single(request, events(), stream, combine)


# -- /api/create --------------------------------------------------------------------------------
def _create_commands(state: State, body: dict[str, Any], staging: Path) -> tuple[str, list[list[str]], str | None]:
    """(model name, Modelfile commands, quantize) from the JSON form of /api/create."""
    from pollama.create.options import format_option_value

    name = model_name(body)
    if not isinstance(name, str) or not name:
        raise APIError(400, "model is required")
    commands: list[list[str]] = []
    source = field(body, "from", str, "")
    files = field(body, "files", dict, {})
    if source and files:
        raise APIError(400, "give either from or files, not both")
    if source:
        # A model name only: paths on the server's disk are not the client's to read.
        if source.startswith(("/", ".", "~")) or "\\" in source:
            raise APIError(400, f"from must name a model, not a path ({source!r}): upload files with /api/blobs and give them in files")
        commands.append(["model", source])
    elif files:
        commands.append(["model", _stage_files(state.store, files, staging)])
    else:
        raise APIError(400, "neither 'from' or 'files' was specified")
    # The draft model: uploaded files (Ollama's draft_files), or pollama's `draft`, a model's name.
    draft_files, draft = field(body, "draft_files", dict, {}), field(body, "draft", str, "")
    if draft and draft_files:
        raise APIError(400, "give either draft or draft_files, not both")
    if draft.startswith(("/", ".", "~")) or "\\" in draft:
        raise APIError(400, f"draft must name a model, not a path ({draft!r}): upload files with /api/blobs and give them in draft_files")
    if draft or draft_files:
        commands.append(["draft", draft or _stage_files(state.store, draft_files, staging / "draft")])
    adapters = field(body, "adapters", dict, {})
    if adapters:
        for path in _stage_files(state.store, adapters, staging / "adapters", single=False):
            commands.append(["adapter", path])
    for key in ("template", "system", "renderer", "parser"):
        value = field(body, key, str, None)
        if value is not None:
            commands.append([key, value])
    parameters = field(body, "parameters", dict, {})
    for key, value in parameters.items():
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, (dict, list)) or v is None:
                raise APIError(400, f'invalid value for parameter "{key}"')
            commands.append([key, format_option_value(v)])
    license_ = body.get("license")
    if license_ is not None and not isinstance(license_, (str, list)):
        raise APIError(400, 'invalid value for "license": expected a string or an array of strings')
    for text in [license_] if isinstance(license_, str) else (license_ or []):
        if not isinstance(text, str):
            raise APIError(400, 'invalid value for "license": expected a string or an array of strings')
        commands.append(["license", text])
    for i, m in enumerate(check_messages(body.get("messages"))):
        commands.append(["message", f"{m['role']}: {m['content']}"])
    quantize = field(body, "quantize", str, None) or field(body, "quantization", str, None)
    return name, commands, quantize


def _safe_file_name(name: str) -> str:
    parts = Path(name).parts
    if not name or Path(name).is_absolute() or ".." in parts or "\\" in name:
        raise APIError(400, f"invalid file name {name!r}")
    return name


def _stage_files(store: Store, files: dict[str, Any], staging: Path, single: bool = True):
    """Uploaded blobs laid out under their file names (links), as create expects a folder."""
    staging.mkdir(parents=True, exist_ok=True)
    paths = []
    for filename, digest in files.items():
        _safe_file_name(filename)
        if not isinstance(digest, str):
            raise APIError(400, f"invalid digest for {filename}")
        try:
            check_digest(digest)
        except (StoreError, ValueError) as e:
            raise APIError(400, str(e)) from None
        blob = store.blob_path(digest)
        if not blob.is_file():
            raise APIError(400, f"blob {digest} for {filename} was not uploaded (POST /api/blobs/{digest} first)")
        target = staging / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(blob, target)
        paths.append(str(target))
    if not single:
        return paths
    ggufs = [p for p in paths if p.endswith(".gguf")]
    if len(paths) == 1:
        return paths[0]
    if len(ggufs) == 1 and not (staging / "config.json").exists():
        return ggufs[0]
    return str(staging)


def _as_uploaded(error: str, staging: Path) -> str:
    """A create error naming the uploaded files by the names the client gave them, rather than
    by where this server staged them (a folder of its own, meaningless to the client)."""
    for folder in (staging / "adapters", staging / "draft", staging):  # where _create_commands stages them
        error = error.replace(f"{folder}{os.sep}", "")
    return error


async def create_response(state: State, request: Request, body: dict[str, Any]) -> Response:
    """/api/create: the job runs in a child process; its status lines are streamed."""
    stream = field(body, "stream", bool, True)
    staging = Path(tempfile.mkdtemp(prefix="pollama-create-"))
    try:
        name, commands, quantize = _create_commands(state, body, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    job = json.dumps({"model": name, "commands": commands, "base_dir": str(staging), "quantize": quantize})

    async def events() -> AsyncIterator[dict[str, Any]]:
        env = {**os.environ, "OLLAMA_MODELS": str(state.store.root)}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pollama.server.create_job", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, env=env, limit=1 << 20)
        try:
            proc.stdin.write(job.encode())
            await proc.stdin.drain()
            proc.stdin.close()
            while line := await proc.stdout.readline():
                message = json.loads(line)
                if "error" in message:
                    raise APIError(message.get("status_code", 500), _as_uploaded(message["error"], staging))
                yield message
            await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            shutil.rmtree(staging, ignore_errors=True)

    def combine(chunks: list[dict[str, Any]]) -> dict[str, Any]:
        return chunks[-1] if chunks else {"status": "success"}

    return await ndjson_or_single(request, events(), stream, combine)
