"""A cluster's configuration: which models are deployed, with how many replicas each.

A TOML file (`pollama serve --ray --config FILE`):

    store = "/srv/ollama/models"   # optional: a store every node sees; else each node's own
    keep_alive = "5m"              # optional: Ollama's keep_alive, also the scale-down delay

    [[models]]
    name = "smollm2"
    num_parallel = 4               # slots of each replica's runner (OLLAMA_NUM_PARALLEL)
    replicas = 2                   # a fixed number, or autoscaling between these two:
    # min_replicas = 0             # 0: scaled to zero after keep_alive without requests
    # max_replicas = 4
    # num_cpus = 1                 # Ray CPUs reserved per replica
    # pull = true                  # a replica (and the ingress) missing the model pulls it from
    # insecure = false             #   its registry (name = "host/namespace/model:tag"), by digest
    # store = "/var/lib/pollama"   # this model's replicas' store (default: the store above)

Autoscaling follows Ray Serve's ongoing requests per replica, aiming at num_parallel (each
slot busy). A replica is saturated at max_ongoing_requests (default num_parallel: all its
slots busy): the router then sends a request that prefers it (prefix affinity) to the less
loaded of two others, and when all are saturated requests wait in Ray's queue.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pollama.server.config import DEFAULT_KEEP_ALIVE, parse_keep_alive

MODEL_KEYS = {"name", "num_parallel", "replicas", "min_replicas", "max_replicas", "num_cpus",
              "max_ongoing_requests", "pull", "insecure", "store"}


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class ModelDeployment:
    name: str
    num_parallel: int = 1
    replicas: int | None = 1  # None: autoscaling between min_replicas and max_replicas
    min_replicas: int = 1
    max_replicas: int = 1
    num_cpus: float = 1.0
    max_ongoing_requests: int = 0  # 0: num_parallel
    pull: bool = False  # pull the model from its registry where a store lacks it
    insecure: bool = False  # that registry speaks plain HTTP
    store: str | None = None  # the replicas' store, if not the cluster's

    @property
    def queue_limit(self) -> int:
        return self.max_ongoing_requests or self.num_parallel

    def deployment_options(self, keep_alive: float) -> dict[str, Any]:
        """Ray Serve's options for this model's deployment (replica count or autoscaling)."""
        options: dict[str, Any] = {"max_ongoing_requests": self.queue_limit,
                                   "ray_actor_options": {"num_cpus": self.num_cpus}}
        if self.replicas is not None:
            options["num_replicas"] = self.replicas
        else:
            delay = 600.0 if math.isinf(keep_alive) or keep_alive < 0 else max(keep_alive, 1.0)
            options["autoscaling_config"] = {
                "min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
                "initial_replicas": max(self.min_replicas, 1),
                "target_ongoing_requests": self.num_parallel, "downscale_delay_s": delay,
            }
        return options


@dataclass(frozen=True)
class ClusterConfig:
    models: list[ModelDeployment] = field(default_factory=list)
    store: str | None = None
    keep_alive: float = DEFAULT_KEEP_ALIVE

    @classmethod
    def load(cls, path: str | Path) -> ClusterConfig:
        try:
            data = tomllib.loads(Path(path).read_text())
        except OSError as e:
            raise ConfigError(f"cannot read the cluster configuration {path}: {e.strerror or e}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
        return cls.from_dict(data, str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "configuration") -> ClusterConfig:
        unknown = set(data) - {"models", "store", "keep_alive"}
        if unknown:
            raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r}")
        keep_alive = DEFAULT_KEEP_ALIVE
        if "keep_alive" in data:
            try:
                keep_alive = parse_keep_alive(data["keep_alive"])
            except ValueError as e:
                raise ConfigError(f"{where}: keep_alive: {e}") from None
        models = [_model(m, f"{where}: models[{i}]") for i, m in enumerate(data.get("models") or [])]
        if not models:
            raise ConfigError(f"{where}: no [[models]] to deploy")
        names = [m.name for m in models]
        if len(set(names)) != len(names):
            raise ConfigError(f"{where}: a model is listed twice")
        store = data.get("store")
        if store is not None and not isinstance(store, str):
            raise ConfigError(f"{where}: store must be a path")
        return cls(models, store, keep_alive)


def _model(entry: Any, where: str) -> ModelDeployment:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
        raise ConfigError(f"{where}: needs a name")
    unknown = set(entry) - MODEL_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r}")

    def count(key: str, default: int, least: int) -> int:
        value = entry.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ConfigError(f"{where}: {key} must be an integer of at least {least}")
        return value

    autoscaled = "min_replicas" in entry or "max_replicas" in entry
    if autoscaled and "replicas" in entry:
        raise ConfigError(f"{where}: give replicas, or min_replicas and max_replicas, not both")
    num_cpus = entry.get("num_cpus", 1.0)
    if not isinstance(num_cpus, int | float) or isinstance(num_cpus, bool) or num_cpus < 0:
        raise ConfigError(f"{where}: num_cpus must be a number of at least 0")
    low, high = count("min_replicas", 1, 0), count("max_replicas", 1, 1)
    if autoscaled and low > high:
        raise ConfigError(f"{where}: min_replicas is above max_replicas")
    for key in ("pull", "insecure"):
        if not isinstance(entry.get(key, False), bool):
            raise ConfigError(f"{where}: {key} must be true or false")
    if not isinstance(entry.get("store", ""), str):
        raise ConfigError(f"{where}: store must be a path")
    return ModelDeployment(
        name=entry["name"], num_parallel=count("num_parallel", 1, 1),
        replicas=None if autoscaled else count("replicas", 1, 1), min_replicas=low, max_replicas=high,
        num_cpus=float(num_cpus), max_ongoing_requests=count("max_ongoing_requests", 0, 0),
        pull=entry.get("pull", False), insecure=entry.get("insecure", False), store=entry.get("store"),
    )
