"""GET /api/status: {"cloud": {"disabled", "source"}}, as current Ollama answers it.

Ollama's cloud (remote models, web search) is off when OLLAMA_NO_CLOUD is true or
~/.ollama/server.json has "disable_ollama_cloud": true; source names which ("env", "config",
"both", or "none"). pollama never reaches the cloud, but clients read this to decide what to
offer, so it is answered from the same settings, read as Ollama reads them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from starlette.responses import Response

from pollama import envconfig
from pollama.server.generate import in_thread
from pollama.server.http import json_response

log = logging.getLogger(__name__)


def _config_disabled() -> bool:
    path = Path.home() / ".ollama" / "server.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return False
    except (OSError, ValueError) as e:  # unreadable or not JSON: ignored, as Ollama ignores it
        log.debug("could not read %s: %s", path, e)
        return False
    return isinstance(config, dict) and config.get("disable_ollama_cloud") is True


def cloud_status() -> dict[str, Any]:
    """{"disabled": bool, "source": "none" | "env" | "config" | "both"}."""
    by_env, by_config = envconfig.no_cloud(), _config_disabled()
    source = {(True, True): "both", (True, False): "env", (False, True): "config"}.get((by_env, by_config), "none")
    return {"disabled": by_env or by_config, "source": source}


def add_status_route(app: FastAPI) -> None:
    """Mount GET /api/status."""

    @app.get("/api/status")
    async def api_status() -> Response:
        return json_response({"cloud": await in_thread(cloud_status)})
