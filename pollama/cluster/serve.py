"""`pollama serve --ray --config FILE`: the Ray Serve application on $OLLAMA_HOST, until Ctrl+C.

Ray's own rules pick the cluster: RAY_ADDRESS (or a `ray start` on this machine) joins an
existing one; otherwise ray.init starts one on this machine. The ingress listens on
OLLAMA_HOST's address and port through Ray Serve's HTTP proxy.
"""

from __future__ import annotations

import logging
import signal
import sys


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def serve_ray(config_path: str | None) -> int:
    """Deploy the configured models and serve until interrupted; 1 with a message on a bad config."""
    from pollama.cluster.config import ClusterConfig, ConfigError
    from pollama.server.config import parse_host

    if not config_path:
        print("Error: pollama serve --ray needs --config FILE: the models to deploy and their replicas "
              "(docs/scaling.md)", file=sys.stderr)
        return 1
    try:
        config = ClusterConfig.load(config_path)
    except ConfigError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    import ray
    from ray import serve

    from pollama.cluster.app import APP_NAME, build

    where = parse_host(None)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    signal.signal(signal.SIGTERM, _interrupt)  # as Ctrl+C: the application and Ray stop cleanly
    ray.init()
    serve.start(http_options={"host": where.host, "port": where.port})
    try:
        serve.run(build(config), name=APP_NAME, route_prefix="/", blocking=True)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0
