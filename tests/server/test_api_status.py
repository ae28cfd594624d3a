"""GET /api/status as current Ollama answers it: whether its cloud is disabled, and by what."""

from __future__ import annotations

import json

import pytest


@pytest.mark.parametrize(("no_cloud", "config", "want"), [
    (None, None, {"disabled": False, "source": "none"}),
    ("1", None, {"disabled": True, "source": "env"}),
    ("yes", None, {"disabled": True, "source": "env"}),  # set but not a bool: true, as Ollama's envconfig.Bool
    (None, {"disable_ollama_cloud": True}, {"disabled": True, "source": "config"}),
    ("true", {"disable_ollama_cloud": True}, {"disabled": True, "source": "both"}),
    (None, "{not json", {"disabled": False, "source": "none"}),
])
def test_cloud_status_from_env_and_server_json(server_factory, tmp_path_factory, no_cloud, config, want):
    home = tmp_path_factory.mktemp("home")
    if config is not None:
        (home / ".ollama").mkdir()
        (home / ".ollama" / "server.json").write_text(config if isinstance(config, str) else json.dumps(config))
    srv = server_factory(HOME=str(home), OLLAMA_NO_CLOUD=no_cloud or "")  # "" is unset, as in Ollama
    with srv.http() as http:
        r = http.get("/api/status")
    assert r.status_code == 200 and r.json() == {"cloud": want}
