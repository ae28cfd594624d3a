"""The FastAPI application: its error answers, and the route families mounted on it: Ollama's
native API (native_generate.py, native_embed.py, native_models.py), OpenAI's (openai.py,
responses.py) and Anthropic's (anthropic.py).

Bodies are read and checked by hand rather than by pydantic models, so that every mistake
gets Ollama's error shape ({"error": "..."}, 400) with a message naming the field.
"""

from __future__ import annotations

import contextlib
import logging

from fastapi import FastAPI
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from pollama import version
from pollama.server.anthropic import add_anthropic_routes
from pollama.server.common import State
from pollama.server.config import ServerConfig
from pollama.server.errors import APIError
from pollama.server.http import ClientGone, json_response
from pollama.server.native_embed import add_embed_routes
from pollama.server.native_generate import add_generate_routes
from pollama.server.native_models import add_model_routes
from pollama.server.openai import add_openai_routes, openai_error
from pollama.server.responses import add_responses_routes
from pollama.server.security import add_security
from pollama.server.status import add_status_route
from pollama.store.store import Store

log = logging.getLogger(__name__)


def create_app(config: ServerConfig | None = None, store: Store | None = None, *, host_check: bool = False,
               scheduler=None) -> FastAPI:
    """The application, with its own scheduler (or the one given); runners stop when it shuts down.

    host_check: refuse non-local Host headers (for a server bound to loopback).
    scheduler: what hands out the runner for a model (pollama.server.common.State).
    """
    state = State(config or ServerConfig.from_env(), store, scheduler)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await state.scheduler.close()

    app = FastAPI(title="pollama", version=version(), lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.pollama = state

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> Response:
        if request.url.path.startswith("/v1/"):
            return openai_error(exc.status, exc.message)
        return json_response({"error": exc.message}, exc.status)

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, exc: ClientGone) -> Response:
        return json_response({"error": "request canceled"}, 499)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code in (404, 405):
            # No such route (or method): gin's own plain-text answer, as Ollama gives it.
            text = "404 page not found" if exc.status_code == 404 else "405 method not allowed"
            return Response(text.encode(), exc.status_code, headers={"content-type": "text/plain"})
        return json_response({"error": str(exc.detail)}, exc.status_code)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s", request.url.path)
        return json_response({"error": f"internal error: {type(exc).__name__}: {exc}"}, 500)

    # -- about ------------------------------------------------------------------------------
    @app.api_route("/", methods=["GET", "HEAD"])
    async def root() -> Response:
        return PlainTextResponse("Ollama is running")

    @app.api_route("/api/version", methods=["GET", "HEAD"])
    async def api_version() -> Response:
        return json_response({"version": version()})

    add_generate_routes(app, state)
    add_embed_routes(app, state)
    add_model_routes(app, state)
    add_openai_routes(app, state)
    add_responses_routes(app, state)
    add_anthropic_routes(app, state)
    add_status_route(app)
    add_security(app, host_check=host_check)
    return app
