"""The generation actor pool's bounds, decided in the driver before any actor starts.

Ray Data's `ActorPoolStrategy(min_size, max_size)` starts `min_size` actors and adds more while
batches wait, up to `max_size`, within the resources the cluster has *now*: it does not ask the
autoscaler for nodes for more actors (measured on the fake autoscaler with logical GPUs: a pool
of 1-3 stayed at one actor through a 96-prompt curation while two GPU node slots stayed
unlaunched). The upper bound is the one figure that has to be right before the run: the GPUs
present at submit are those of the nodes up now, and `cluster.yaml` starts its GPU workers at
zero, so a pool sized from them curates on one actor (or none).

So on an autoscaling cluster the pool asks for its actors at once (`PoolPlan.sizes`):
min(max_actors, batches) of them, each pending until the autoscaler brings up a node for it and
working from then on, so the pool grows with the cluster; a stage with less work than that asks
for no more nodes than it has batches. On a fixed cluster Ray Data's own scaling within
[min_actors, max_actors] stands: the resources are there.

The rule (`plan_pool`, pure):
- `resources.max_actors` stated: the pool is [min_actors, max_actors], whatever the cluster.
- not stated, on a fixed cluster: one actor per `tensor_parallel_size` GPUs present at submit;
  on a CPU-only cluster one (a second CPU engine competes for the same cores: FIELD-NOTES).
- not stated, on an autoscaling cluster: `PoolError` at submit, naming the key to set; so is an
  unstated `use_gpu` there (no GPU node may be up yet, which would silently mean CPU engines).

An autoscaling cluster (`autoscaling_evidence`) is one whose GCS hears from an autoscaler that
launches nodes, by the two ways Ray 2.60's autoscalers report:
- v1 (`ray up`, `ray start --autoscaling-config`, Ray's fake multi-node provider) writes its
  status into the GCS key-value store each round, its `autoscaler_report` naming the node type of
  every node. A head started without an autoscaling config (`ray start --head`, a local
  `ray.init`) runs the same monitor with Ray's read-only provider, which launches nothing and
  names each node `node_<id>` (`format_readonly_node_type`): that one is a fixed cluster.
- v2 and KubeRay report a cluster config whose node groups may grow (max_count -1 or above
  min_count: Ray Data's own rule).
Neither yet (a monitor that has not reported) counts as fixed: a GPU pool there with no GPU up
is refused anyway, as one that would wait forever.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from advdistill.config import EngineConfig, ExperimentConfig, ResourcesConfig


class PoolError(ValueError):
    """A generation pool that cannot be sized as configured; the message says what to set."""


@dataclass(frozen=True)
class PoolPlan:
    """What each generation actor asks Ray for, and the pool's bounds."""

    remote_args: dict[str, Any]
    min_actors: int
    max_actors: int
    gpus_per_actor: int
    why: str  # how max_actors was decided, for the log and the summary
    env: dict[str, str] = field(default_factory=dict)  # forwarded to the actors by name (an endpoint's key)
    autoscaling: bool = False  # the cluster adds nodes on demand (the pool then asks for its actors at once)

    def sizes(self, batches: int) -> dict[str, int]:
        """`ActorPoolStrategy`'s min_size, max_size and initial_size for a stage of `batches` batches."""
        if self.autoscaling:
            n = max(1, min(self.max_actors, batches))
            return {"min_size": n, "max_size": n, "initial_size": n}
        return {"min_size": self.min_actors, "max_size": self.max_actors, "initial_size": self.min_actors}


def plan_pool(resources: ResourcesConfig, engine: EngineConfig, *, cluster_gpus: int, autoscaling: str | None,
              where: str) -> PoolPlan:
    """The pool for a stage whose config section is `where` (`curate`, `eval`), on a cluster
    that has `cluster_gpus` GPUs now and autoscales for the reason `autoscaling` (None: fixed)."""
    key = f"{where}.resources"
    if engine.backend == "openai":  # the teacher computes on its server: an actor only sends requests
        use_gpu = False
    elif resources.use_gpu is not None:
        use_gpu = resources.use_gpu
    elif autoscaling:
        raise PoolError(f"{key}.use_gpu is not set and this cluster autoscales ({autoscaling}): the GPUs up at "
                        f"submit ({cluster_gpus}) say nothing about the nodes to come. Set --set {key}.use_gpu=true "
                        f"(vLLM on GPU nodes) or false (CPU engines)")
    else:
        use_gpu = cluster_gpus > 0
    tp = engine.tensor_parallel_size if use_gpu else 0
    args: dict[str, Any] = {"num_cpus": resources.cpus_per_worker}
    if use_gpu:
        args["num_gpus"] = tp
    if resources.custom_resources:  # only on the nodes (node types) that declare them
        args["resources"] = dict(resources.custom_resources)
    if resources.max_actors is not None:
        max_actors, why = resources.max_actors, f"{key}.max_actors"
    elif autoscaling:
        raise PoolError(
            f"{key}.max_actors is not set and this cluster autoscales ({autoscaling}): the pool would be sized from "
            f"the {cluster_gpus} GPU(s) up at submit, not from the nodes the autoscaler can add. Set "
            f"--set {key}.max_actors=N (at most the GPUs the cluster may reach / tensor_parallel_size {max(tp, 1)}; "
            f"{key}.min_actors={resources.min_actors} start first)")
    elif use_gpu:
        if cluster_gpus < tp:
            raise PoolError(f"{where} asks for GPUs ({key}.use_gpu) and this fixed cluster has {cluster_gpus}, fewer "
                            f"than one engine's tensor_parallel_size {tp}: its actors would wait forever. Add GPU "
                            f"nodes, or set {key}.use_gpu=false")
        max_actors = cluster_gpus // tp
        why = f"{cluster_gpus} GPU(s) at submit / tensor_parallel_size {tp} (fixed cluster)"
    else:
        max_actors, why = 1, "one CPU engine (a second would compete for the same cores)"
    env = {}
    key_env = engine.endpoint.api_key_env if engine.backend == "openai" else None
    if key_env and os.environ.get(key_env):
        # The key the driver was given reaches its generation actors (Ray workers do not inherit
        # the driver's environment), by name, never through the config.
        env[key_env] = os.environ[key_env]
        args["runtime_env"] = {"env_vars": dict(env)}
    return PoolPlan(args, min(resources.min_actors, max_actors), max_actors, tp, why, env, autoscaling is not None)


def autoscaling_evidence() -> str | None:
    """Why the connected cluster counts as autoscaling (module docstring), or None for a fixed one."""
    import ray
    from ray._private import ray_constants
    from ray.experimental.internal_kv import _internal_kv_get

    from ray.autoscaler._private.util import format_readonly_node_type

    status = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
    report = (json.loads(status).get("autoscaler_report") or {}) if status else {}
    readonly = format_readonly_node_type("")  # the prefix of the read-only provider's node types
    launched = sorted({t for t in (report.get("node_type_mapping") or {}).values() if not t.startswith(readonly)}
                      | {t for t in (report.get("active_nodes") or {}) if not t.startswith(readonly)})
    if launched:
        return (f"an autoscaler with node types ({', '.join(launched)}) reports to the GCS (autoscaler v1: ray up, "
                f"--autoscaling-config)")
    config = ray._private.state.state.get_cluster_config()
    for group in (config.node_group_configs if config else []):
        if group.resources and group.max_count != 0 and (group.max_count == -1 or group.max_count > group.min_count):
            return f"the autoscaler's cluster config lets node type {group.name or '?'} grow (autoscaler v2 / KubeRay)"
    return None


def actor_pool(resources: ResourcesConfig, engine: EngineConfig, where: str) -> PoolPlan:
    """`plan_pool` for the connected cluster (its GPUs now, whether it autoscales)."""
    import ray

    return plan_pool(resources, engine, cluster_gpus=int(ray.cluster_resources().get("GPU", 0)),
                     autoscaling=autoscaling_evidence(), where=where)


def check_pools(cfg: ExperimentConfig) -> None:
    """Plan curation's and evaluation's pools before a run's first stage (`PoolError` if either fails)."""
    actor_pool(cfg.curate.resources, cfg.curate.engine, "curate")
    actor_pool(cfg.eval.resources, cfg.eval.engine, "eval")
