"""Ray Serve's request router for model replicas: to the replica the caller prefers (the one
holding the prompt's prefix, pollama.cluster.affinity), else the less loaded of two.

The caller (the ingress, pollama.cluster.remote) names its preferred replica in the
request's `prefer` keyword. The router offers that replica first, and Ray's routing loop
takes it unless it is saturated (its ongoing requests at max_ongoing_requests); then the
router's second offer applies: two replicas drawn at random, the one with the shorter queue
(power of two choices, Ray's default policy). No FIFOMixin: with it Ray hands the replica
found for one request to whichever request is oldest, which would undo the affinity.
"""

from __future__ import annotations

import random

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica


def two_choices(replicas: list[RunningReplica]) -> list[RunningReplica]:
    """Two replicas drawn at random (all of them when there are fewer)."""
    return random.sample(replicas, min(2, len(replicas)))


class PrefixAffinityRouter(RequestRouter):
    """Preferred replica first, then power of two choices (see the module docstring)."""

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        prefer = None
        if pending_request is not None:
            prefer = pending_request.kwargs.get("prefer")
            # When every offer is saturated, Ray's loop waits (with backoff) before asking again,
            # rather than spinning.
            pending_request.routing_context.should_backoff = True
        if prefer:
            chosen = [r for r in candidate_replicas if r.replica_id.unique_id == prefer]
            if chosen:
                others = [r for r in candidate_replicas if r.replica_id.unique_id != prefer]
                return [chosen, two_choices(others)] if others else [chosen]
        return [two_choices(candidate_replicas)] if candidate_replicas else []
