"""pollama as a Ray Serve application: an ingress deployment serving the server's own FastAPI
app (pollama.server.app.create_app: every native, OpenAI and Anthropic route), whose
scheduler sends each model's requests to that model's deployment (pollama.cluster.replica),
routed by prefix affinity (pollama.cluster.router).

    build(config)                 the Application, for serve.run
    serve run pollama.cluster.app:app_builder config=cluster.toml
    pollama serve --ray --config cluster.toml
"""

from __future__ import annotations

import re
from typing import Any

from ray import serve
from ray.serve.config import RequestRouterConfig

from pollama.cluster.config import ClusterConfig
from pollama.cluster.remote import ClusterScheduler, ServedBy
from pollama.cluster.replica import ModelReplica
from pollama.cluster.router import PrefixAffinityRouter

APP_NAME = "pollama"


def deployment_name(model: str) -> str:
    """A model's deployment: "model-" and its name in the characters Ray allows."""
    return "model-" + re.sub(r"[^A-Za-z0-9_-]+", "-", model)


class Ingress:
    """Holds the model deployments' handles; Ray Serve serves the app its builder returns."""

    def __init__(self, models: dict[str, Any], config: ClusterConfig):
        self.models, self.config = models, config

    def __serve_build_asgi_app__(self):
        from pollama.server.app import create_app
        from pollama.server.config import ServerConfig
        from pollama.cluster.replica import local_model
        from pollama.store.store import Store

        store = Store(self.config.store) if self.config.store else Store()
        # The routes resolve a request's model by the store's name for it ("smollm2" may be
        # "smollm2:latest"): the handles are keyed the same way. The ingress renders prompts,
        # so it needs each model (its template and metadata) in its own store too.
        handles = {}
        for model in self.config.models:
            ref = local_model(store, model.name, pull=model.pull, insecure=model.insecure)
            handles[ref.name] = self.models[model.name]
        server_config = ServerConfig.from_env()
        scheduler = ClusterScheduler(handles, self.config.keep_alive)
        app = create_app(server_config, store, scheduler=scheduler)
        app.add_middleware(ServedBy)
        return app


def build(config: ClusterConfig) -> serve.Application:
    """The Ray Serve application for config: one deployment per model, and the ingress."""
    router = RequestRouterConfig(request_router_class=PrefixAffinityRouter)
    models = {}
    for model in config.models:
        deployment = serve.deployment(ModelReplica).options(
            name=deployment_name(model.name), request_router_config=router,
            **model.deployment_options(config.keep_alive))
        threads = max(1, int(model.num_cpus)) if model.num_cpus else None
        models[model.name] = deployment.bind(model.name, model.num_parallel, threads, model.store or config.store,
                                             model.pull, model.insecure)
    ingress = serve.deployment(serve.ingress()(Ingress)).options(
        name="ingress", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
    return ingress.bind(models, config)


def app_builder(args: dict[str, str]) -> serve.Application:
    """For `serve run pollama.cluster.app:app_builder config=FILE`."""
    return build(ClusterConfig.load(args["config"]))
