"""Where a stage's workers ran: the Ray nodes of its actors, for `run.json`.

A stage's workers are Ray actors — the generation engines (`GenerationActor`, inside Ray Data's
`MapWorker`), the Ray Train workers (`RayTrainWorker`), the Serve replicas (`ServeReplica:…`).
The GCS actor table lists every actor of the cluster, dead ones too (a node lost mid-stage shows
its actors there, and their replacements elsewhere), with the node each ran on and when it
started; Ray's state API (served by the dashboard, which `ray start --head` and a cluster run)
adds the repr names that tell Ray Data's `_MapWorker`s apart. A local `ray.init` without a
dashboard still places the Train workers and Serve replicas, by class name.
"""

from __future__ import annotations

import time
from typing import Any

GENERATION = "GenerationActor"
TRAIN_WORKER = "RayTrainWorker"
SERVE_REPLICA = "ServeReplica:"


def now_ms() -> int:
    return int(time.time() * 1000)


def _repr_names() -> dict[str, str]:
    """actor id → its repr name (`MapWorker(MapBatches(GenerationActor))` for Ray Data's actors,
    whose class is `_MapWorker`), from the state API; {} where it cannot be reached."""
    try:
        import ray  # Ray: asked only while a run records placement
        from ray.util.state import list_actors
        from ray.util.state.common import RAY_MAX_LIMIT_FROM_API_SERVER

        # This cluster's address, not a guess (several clusters may run on one host); the state
        # API refuses a limit above its own maximum (10,000 by default).
        actors = list_actors(address=ray.get_runtime_context().gcs_address, detail=True,
                             limit=RAY_MAX_LIMIT_FROM_API_SERVER, raise_on_missing_output=False, timeout=30)
    except Exception:  # noqa: BLE001 - no dashboard (local ray.init): class names only
        return {}
    return {actor.actor_id: actor.repr_name or "" for actor in actors}


def actor_nodes(class_name: str, since_ms: int = 0, until_ms: int | None = None) -> list[str] | None:
    """Ids of the nodes that ran actors whose class name (or repr name) contains `class_name` and
    that started in [since_ms, until_ms]; None when the actor table cannot be read.

    Times and nodes come from the GCS actor table (the state API's `ActorState` has no start
    time); the repr names from the state API where a dashboard serves it."""
    try:
        from ray._private.state import actors as actor_table  # Ray: asked only while a run records placement

        table = actor_table()
    except Exception:  # noqa: BLE001 - not connected, or an older Ray: no placement
        return None
    reprs = _repr_names()
    nodes = set()
    for actor_id, actor in table.items():
        names = f"{actor.get('ActorClassName') or ''} {reprs.get(actor_id, '')}"
        start = actor.get("StartTime") or 0
        node = (actor.get("Address") or {}).get("NodeID")
        if class_name in names and node and start >= since_ms and (
                until_ms is None or start <= until_ms):
            nodes.add(node)
    return sorted(nodes)


def cluster_nodes() -> dict[str, dict[str, Any]]:
    """Every node the cluster has had (dead ones too): its custom resources, CPUs, GPUs, and
    whether it is alive — so run.json says what kind of node each stage ran on."""
    import ray  # Ray: asked only while a run records placement

    nodes = {}
    for node in ray.nodes():
        resources = {k: v for k, v in node.get("Resources", {}).items()
                     if not k.startswith("node:") and k not in ("memory", "object_store_memory")}
        nodes[node["NodeID"]] = {"resources": resources, "alive": bool(node.get("Alive")),
                                 "address": node.get("NodeManagerAddress")}
    return nodes
