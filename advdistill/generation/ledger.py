"""What a generation pool held, counted by its actors: accelerator-seconds summed over their lifetimes.

A pool on an autoscaling cluster grows and shrinks while a stage runs, so no snapshot of the
cluster's GPUs says what the stage cost. Each generation actor reports itself to the stage's
ledger instead: from its worker process's start (imports and the engine's load hold the GPUs
too), with the GPUs Ray assigned it, and every `HEARTBEAT_S` after, until its process ends — however it ends (the pool
shrinks, the stage finishes, a node is lost, the actor is killed and restarted). An actor's
lifetime is from its start to midway between its last heartbeat and the one it did not send, so
each is counted to within `HEARTBEAT_S / 2`; a restarted actor reports again as a new lease.

`held` is the pure arithmetic; `Ledger` the Ray side: a small actor (no CPU) pinned to the
driver's node, which outlives the worker nodes the autoscaler releases.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

HEARTBEAT_S = 2.0


@dataclass(frozen=True)
class Held:
    """A pool's figures: accelerator-seconds and actor-seconds over every lease, the leases
    (actor starts, restarts included), and the most actors alive at once."""

    accelerator_seconds: float
    actor_seconds: float
    actors_started: int
    most_actors_at_once: int

    def as_dict(self) -> dict[str, Any]:
        return {"accelerator_seconds": round(self.accelerator_seconds, 2),
                "actor_seconds": round(self.actor_seconds, 2), "actors_started": self.actors_started, "most_actors_at_once": self.most_actors_at_once}


def held(leases: Mapping[str, Sequence[float]], now: float, heartbeat_s: float = HEARTBEAT_S) -> Held:
    """Figures of `leases` (key -> (gpus, start, last heartbeat), seconds since the epoch) as of
    `now`: each lease ends half a heartbeat after its last one, or now if that is later than now."""
    spans, certain = [], []
    for gpus, start, last in leases.values():
        spans.append((gpus, start, max(start, min(last + heartbeat_s / 2, now))))
        certain.append((start, max(start, min(last, now))))  # alive for sure: until its last heartbeat
    # At once: over the spans each lease was surely alive (a restarted actor's new process may start
    # within the half heartbeat its predecessor is counted beyond its last beat).
    events = sorted([(start, 1) for start, _ in certain] + [(end, -1) for _, end in certain])
    alive = most = 0
    for _, change in events:  # ends sort before starts at the same instant: touching spans do not overlap
        alive += change
        most = max(most, alive)
    return Held(accelerator_seconds=sum(g * (end - start) for g, start, end in spans),
                actor_seconds=sum(end - start for _, start, end in spans), actors_started=len(spans),
                most_actors_at_once=most)


class _LedgerActor:
    """The leases of one stage's actors (runs as a Ray actor)."""

    def __init__(self):
        self.leases: dict[str, list[float]] = {}

    def started(self, key: str, gpus: float, at: float) -> None:
        self.leases[key] = [gpus, at, at]

    def alive(self, key: str, at: float) -> None:
        if key in self.leases:
            self.leases[key][2] = max(self.leases[key][2], at)

    def read(self) -> dict[str, list[float]]:
        return self.leases


class Ledger:
    """A stage's ledger: `open()` in the driver, hand `handle` to the actors (`report_lease`),
    `read()` once the stage's dataset is consumed, `close()` after."""

    def __init__(self, handle: Any):
        self.handle = handle

    @classmethod
    def open(cls) -> "Ledger":
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        actor = ray.remote(num_cpus=0, scheduling_strategy=here, max_restarts=0)(_LedgerActor)
        return cls(actor.remote())

    def read(self) -> Held:
        import ray

        return held(ray.get(self.handle.read.remote()), time.time())

    def close(self) -> None:
        import ray

        ray.kill(self.handle)

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def report_lease(handle: Any, gpus: float, start: float | None = None) -> str:
    """From inside an actor: start its lease at `start` (default now) and keep it alive with
    heartbeats from a daemon thread for as long as the process lives. Returns the lease's key."""
    key = uuid.uuid4().hex
    handle.started.remote(key, gpus, time.time() if start is None else start)

    def beat() -> None:
        while True:
            time.sleep(HEARTBEAT_S)
            handle.alive.remote(key, time.time())  # fire and forget: a gone ledger costs nothing

    threading.Thread(target=beat, name="ledger-heartbeat", daemon=True).start()
    return key
