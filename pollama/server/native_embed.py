"""Ollama's /api/embed and /api/embeddings (vectors), /api/tokenize and /api/detokenize."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from pollama.server.common import State, keep_alive_of
from pollama.server.errors import APIError
from pollama.server.generate import detokenize, embed, tokenize
from pollama.server.http import field, json_response, read_json, unless_disconnected
from pollama.server.options import request_options


def add_embed_routes(app: FastAPI, state: State) -> None:
    """Mount the embedding and tokenizer routes on app."""

    @app.post("/api/embed")
    async def api_embed(request: Request) -> Response:
        body = await read_json(request)
        model = await state.resolve(body.get("model"))
        texts = body.get("input")
        if texts is None:
            texts = []
        if isinstance(texts, str):
            texts = [texts] if texts else []
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise APIError(400, 'invalid input type: "input" must be a string or an array of strings')
        truncate = field(body, "truncate", bool, True)
        dimensions = field(body, "dimensions", int, 0)
        if dimensions < 0:
            raise APIError(400, "dimensions must not be negative")
        options = request_options(model, body.get("options"), state.config)
        answer = await unless_disconnected(request, embed(
            state.scheduler, model, options, keep_alive_of(body), texts, truncate=truncate, dimensions=dimensions))
        return json_response({
            "model": body["model"], "embeddings": answer["embeddings"], "total_duration": answer["total_duration"],
            "load_duration": answer["load_duration"], "prompt_eval_count": answer["prompt_eval_count"],
        })

    @app.post("/api/embeddings")
    async def api_embeddings(request: Request) -> Response:
        body = await read_json(request)
        model = await state.resolve(body.get("model"))
        prompt = field(body, "prompt", str, "")
        options = request_options(model, body.get("options"), state.config)
        # The legacy endpoint returns the model's own vector, not re-normalized.
        answer = await unless_disconnected(request, embed(
            state.scheduler, model, options, keep_alive_of(body), [prompt] if prompt else [], normalize=False))
        return json_response({"embedding": answer["embeddings"][0] if answer["embeddings"] else []})

    # -- tokens -----------------------------------------------------------------------------
    @app.post("/api/tokenize")
    async def api_tokenize(request: Request) -> Response:
        body = await read_json(request)
        model = await state.resolve(body.get("model"))
        content = field(body, "content", str, "")
        options = request_options(model, body.get("options"), state.config)
        async with state.scheduler.use(model, options.spec, keep_alive_of(body)) as loaded:
            tokens = await tokenize(loaded.runner, content)
        return json_response({"model": body["model"], "tokens": tokens})

    @app.post("/api/detokenize")
    async def api_detokenize(request: Request) -> Response:
        body = await read_json(request)
        model = await state.resolve(body.get("model"))
        tokens = field(body, "tokens", list, [])
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
            raise APIError(400, 'invalid value for "tokens": expected an array of integers')
        options = request_options(model, body.get("options"), state.config)
        async with state.scheduler.use(model, options.spec, keep_alive_of(body)) as loaded:
            content = await detokenize(loaded.runner, tokens)
        return json_response({"model": body["model"], "content": content})
