"""What every replica has loaded, for /api/ps across the cluster.

Ray Serve gives the ingress one handle per deployment, not one per replica, so the ingress
cannot ask each replica in turn. Instead each model replica reports what it holds to one small
named actor per application (the board), every REPORT_EVERY_S seconds and when it stops; the
ingress reads the board. A replica that died stops reporting: its entry is dropped once older
than STALE_AFTER_S, and a loaded model whose keep_alive ran out is dropped at its expiry.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import ray

REPORT_EVERY_S = 2.0
STALE_AFTER_S = 3 * REPORT_EVERY_S


@ray.remote(num_cpus=0)
class ReplicaBoard:
    """replica id -> (when it last reported, what it reported)."""

    def __init__(self):
        self.reports: dict[str, tuple[float, dict[str, Any]]] = {}

    def report(self, replica: str, status: dict[str, Any] | None) -> None:
        if status is None:  # the replica is stopping
            self.reports.pop(replica, None)
        else:
            self.reports[replica] = (time.monotonic(), status)

    def current(self) -> list[dict[str, Any]]:
        """The live replicas' reports, with only the models whose keep_alive has not run out."""
        now, wall = time.monotonic(), datetime.now(UTC)
        for replica in [r for r, (at, _) in self.reports.items() if now - at > STALE_AFTER_S]:
            del self.reports[replica]
        return [{**status, "loaded": [m for m in status["loaded"] if m["until"] > wall]}
                for _, status in self.reports.values()]


def board(app_name: str):
    """The board of application app_name, created by whichever asks first. Detached, so it
    outlives the replica or ingress that happened to create it (it stays until Ray stops, also
    after `serve.delete` of its application: one idle actor without CPUs); restarted by Ray if
    its process dies, empty, and filled again by the replicas' next reports."""
    return ReplicaBoard.options(name=f"pollama-board:{app_name}", namespace="serve", get_if_exists=True,
                                lifetime="detached", max_restarts=-1, max_task_retries=-1).remote()
