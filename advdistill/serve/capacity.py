"""Serving on GPUs that comes up, or says why not, before `serve.run`.

Every model replica and every on-demand engine holds `serve.gpus_per_replica` GPUs where the
cluster has GPUs (a fraction shares one GPU: 0.5 puts two engines on it), with a matching share of
its memory (`memory_fraction`). `check_gpu_plan` counts the engines the app will hold — one per
configured model, plus `serve.max_models_per_replica` on-demand engines — against the GPU slots of
the cluster's nodes (Ray places a fraction within one GPU, and a whole number of GPUs within one
node) and, on an autoscaler that states them (v2, KubeRay), the node groups' maxima. An
infeasible plan is a `GpuPlanError` with the numbers, in seconds, instead of replicas that wait
for GPUs forever.
Plain Python but for `cluster_gpu_nodes` (which asks Ray)."""

from __future__ import annotations

import math
from typing import Any

from advdistill.config import ExperimentConfig
from advdistill.generation.pool import autoscaling_evidence

EPSILON = 1e-9


class GpuPlanError(ValueError):
    """A serving plan the cluster cannot place; the message has the numbers and what to change."""


def memory_fraction(cfg: ExperimentConfig) -> float:
    """The share of a GPU's memory each served engine takes: `serve.gpu_memory_utilization`, or
    the engine's own `gpu_memory_utilization` scaled to the GPU share it holds."""
    if cfg.serve.gpu_memory_utilization is not None:
        return cfg.serve.gpu_memory_utilization
    return round(min(1.0, cfg.serve.gpus_per_replica) * cfg.eval.engine.gpu_memory_utilization, 4)


def slots_on(node_gpus: float, per_replica: float) -> int:
    """Engines of `per_replica` GPUs that fit on a node with `node_gpus` GPUs."""
    if per_replica <= 1:
        return math.floor(node_gpus + EPSILON) * math.floor(1 / per_replica + EPSILON)
    return math.floor(node_gpus / math.ceil(per_replica - EPSILON) + EPSILON)


def check_gpu_plan(engines: int, per_replica: float, node_gpus: list[float], group_gpus: list[tuple[float, int]]
                   = (), what: str = "") -> str:
    """A line saying how `engines` engines of `per_replica` GPUs fit on nodes with `node_gpus` GPUs
    (plus up to `max_count` nodes of each autoscaler node group's GPUs in `group_gpus`); GpuPlanError
    if they cannot. `what` says what the engines are, for the message."""
    if per_replica > 1 and abs(per_replica - round(per_replica)) > EPSILON:
        raise GpuPlanError(f"serve.gpus_per_replica {per_replica}: above 1, Ray places whole GPUs only; give an "
                           "integer or a fraction of one GPU")
    here = sum(slots_on(g, per_replica) for g in node_gpus)
    more = sum(slots_on(g, per_replica) * count for g, count in group_gpus)
    if engines <= here + more:
        return (f"GPU plan: {engines} engine(s){what} at {per_replica:g} GPU each; {here} slot(s) on the "
                f"{sum(node_gpus):g} GPU(s) up now" + (f", {more} more the autoscaler may add" if more else ""))
    need = engines * per_replica
    fits = next((f for f in (0.5, 1 / 3, 0.25) if f < per_replica
                 and engines <= sum(slots_on(g, f) for g in node_gpus) + sum(slots_on(g, f) * c for g, c in group_gpus)),
                None)
    hint = (f"lower serve.gpus_per_replica to {fits:.3g} (each engine then takes at most that share of a GPU's memory)"
            if fits else "serve fewer models, or add GPU nodes")
    raise GpuPlanError(f"the serving plan cannot be placed: {engines} engine(s){what} x serve.gpus_per_replica "
                       f"{per_replica:g} = {need:g} GPU(s) in {engines} slot(s), and the cluster has "
                       f"{sum(node_gpus):g} GPU(s) on {len(node_gpus)} node(s) = {here} slot(s)"
                       + (f" (+{more} from the autoscaler's node groups)" if more else "") + f": {hint}")


def cluster_gpu_nodes() -> tuple[list[float], list[tuple[float, int]], bool]:
    """(GPUs of each live node, (GPUs per node, max nodes) of each autoscaler node group that
    states them, whether an autoscaler may add nodes with unknown bounds)."""
    import ray

    nodes = [float(n["Resources"].get("GPU", 0)) for n in ray.nodes() if n.get("Alive")]
    groups: list[tuple[float, int]] = []
    config = ray._private.state.state.get_cluster_config()
    unbounded = False
    for group in (config.node_group_configs if config else []):
        gpus = float((group.resources or {}).get("GPU", 0))
        if gpus and group.max_count == -1:
            unbounded = True
        elif gpus:
            groups.append((gpus, group.max_count))
    if not groups and autoscaling_evidence() is not None:
        unbounded = True  # a v1 autoscaler reports no bounds to the GCS: its max_workers are in its own config
    return nodes, groups, unbounded


def serving_gpus(cfg: ExperimentConfig, engines: int) -> tuple[float, str | None]:
    """(GPUs each engine holds: 0 on a cluster without GPUs, the line to log) for the connected
    cluster; GpuPlanError when `engines` engines cannot be placed."""
    nodes, groups, unbounded = cluster_gpu_nodes()
    if not any(nodes) and not groups:
        return 0.0, None
    per_replica = cfg.serve.gpus_per_replica
    try:
        return per_replica, check_gpu_plan(engines, per_replica, nodes, groups)
    except GpuPlanError:
        if not unbounded:
            raise
        return per_replica, (f"GPU plan: {engines} engine(s) at {per_replica:g} GPU each need more than the "
                             f"{sum(nodes):g} GPU(s) up now; the autoscaler may add nodes (its bounds are not visible "
                             "here): the replicas wait for them")


def engine_options(gpus: float, cpus: float, custom: dict[str, float], given: dict[str, Any] | None) -> dict[str, Any]:
    """The Ray options of one engine's process (a model replica or an on-demand engine): its CPUs,
    its GPU share where there is one, the custom resources of `serve.custom_resources`, and what
    the app's arguments give (which win)."""
    options: dict[str, Any] = {"num_cpus": cpus}
    if gpus:
        options["num_gpus"] = gpus
    if custom:
        options["resources"] = dict(custom)
    return {**options, **(given or {})}
