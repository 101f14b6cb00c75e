"""The end-to-end driver (SPEC §1, §9b): curate → train AdvDistill and the SFT baseline →
evaluate teacher, student base, SFT and AdvDistill in and out of distribution → report →
optionally serve. Each stage is skipped when its output says it is complete
(`advdistill.run.folders`), so a rerun after a failure continues where the last one stopped.
`OUTPUT/run.json` records what ran, where (the nodes of each stage's workers, and each node's
resources), and what each stage cost. OUTPUT is a local folder or a URI every node sees, such
as `s3://bucket/runs/gsm8k` (`advdistill.storage`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

from advdistill.cards import configured_name
from advdistill.config import DatasetConfig, ExperimentConfig, ResourcesConfig, dump_config, with_overrides
from advdistill.curate.stage import curate
from advdistill.evaluation.evaluator import EvalOutput, evaluate_splits
from advdistill.fingerprint import run_fingerprint
from advdistill.generation.pool import check_pools
from advdistill.report import write_report
from advdistill.rerun import claim
from advdistill.run.folders import RunLayout, split_label
from advdistill.run.placement import GENERATION, SERVE_REPLICA, TRAIN_WORKER, actor_nodes, cluster_nodes, now_ms
from advdistill.run.publish import write_run_cards
from advdistill.run.tracking import NoTracking, RunTracker, numbers, open_tracking
from advdistill.serve.auth import TOKEN_FILE, auth_line, is_loopback, stored_token
from advdistill.storage import PathLike, is_uri, resolved
from advdistill.train.trainer import TrainOutput, train


@dataclass
class Tracked:
    """What a stage's MLflow run gets besides its cost."""

    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    artifacts: list[PathLike] = field(default_factory=list)


class RunManifest:
    """OUTPUT/run.json: the run's models, splits and per-stage costs, rewritten as stages end;
    each stage that runs also ends its MLflow run (`advdistill.run.tracking`)."""

    def __init__(self, path: PathLike, cfg: ExperimentConfig):
        self.path = path
        self.tracker: RunTracker | NoTracking = NoTracking()
        previous = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.data: dict[str, Any] = {
            "name": cfg.name,
            "train_dataset": split_label(cfg.curate.dataset),
            "splits": [split_label(cfg.eval.test)] + [split_label(d) for d in cfg.eval.ood],
            "ood": [split_label(d) for d in cfg.eval.ood],
            "models": {},
            "stages": previous.get("stages", {}),
            "nodes": previous.get("nodes", {}),
            "tracking": previous.get("tracking", {}),  # MLflow run ids, so a rerun logs into the same runs
            "accelerator_hour_price": cfg.accelerator_hour_price,  # the report's dollars column
        }

    def stage(self, name: str, done: bool, run: Callable[..., dict[str, Any]], *args: Any, actors: str = "",
              track: Callable[[], Tracked] | None = None) -> None:
        """`run(*args)` unless the stage is done; record its cost (tokens, wall time,
        accelerator-hours, and dollars where the config has a price) and the nodes its `actors`
        (a class name, `advdistill.run.placement`) ran on;
        `track()` says what its MLflow run gets besides the cost."""
        if done:
            print(f"[distill] {name}: done earlier, skipped", flush=True)
            self.data["stages"].setdefault(name, {})["skipped"] = True
        else:
            print(f"[distill] {name}: running", flush=True)
            start, since = time.time(), now_ms()
            try:
                cost = run(*args) or {}
            except BaseException:
                self.tracker.end_stage(name, failed=True)
                raise
            cost.setdefault("wall_seconds", round(time.time() - start, 2))
            if actors:
                cost["nodes"] = actor_nodes(actors, since)
            price = self.data["accelerator_hour_price"]
            if price is not None and "accelerator_hours" in cost:
                cost["dollars"] = round(cost["accelerator_hours"] * price, 2)
            self.data["stages"][name] = cost
            tracked = track() if track else Tracked()
            self.tracker.end_stage(name, metrics={**numbers(cost), **tracked.metrics}, params=tracked.params,
                                   artifacts=tracked.artifacts)
        self.record_nodes()
        self.save()

    def record_nodes(self) -> None:
        """Every node seen so far, with its resources (dead ones stay listed)."""
        try:
            for node_id, node in cluster_nodes().items():
                self.data["nodes"][node_id] = node
        except Exception:  # noqa: BLE001 - placement is a record, never a reason to fail a run
            pass

    def save(self) -> None:
        self.path.write_text(json.dumps(self.data, indent=2))


def model_slug(model: str) -> str:
    """`Qwen/Qwen2.5-3B` → `Qwen2.5-3B`: a model's name for folder and table labels."""
    return Path(model.rstrip("/")).name


def _local(path: str) -> str:
    return str(Path(path).resolve()) if Path(path).exists() else path


def _cost(tokens: int, wall: float, resources: ResourcesConfig, cluster_gpus: int, gpus_per_worker: int,
          workers: int) -> dict[str, Any]:
    use_gpu = resources.use_gpu if resources.use_gpu is not None else cluster_gpus > 0
    gpus = gpus_per_worker * workers if use_gpu else 0
    return {"tokens": tokens, "wall_seconds": round(wall, 2), "accelerator_hours": round(wall * gpus / 3600, 4)}


@dataclass(frozen=True)
class Training:
    name: str  # train-NAME folder, model key in the report
    method: str  # train.method (a training method)
    student: str


@dataclass(frozen=True)
class Evaluated:
    path: str  # hub id or local folder
    few_shot: int  # base models get k-shot prompts; distilled students zero-shot
    endpoint: bool = False  # evaluated through curation's OpenAI-compatible endpoint (a teacher we do not host)


def trainings(cfg: ExperimentConfig) -> list[Training]:
    """AdvDistill and the SFT baseline on the student, SFT on each extra student."""
    runs = [Training("advdistill", "advdistill", cfg.student)]
    if cfg.sft_baseline:
        runs.append(Training("sft", "sft", cfg.student))
    return runs + [Training(f"sft@{model_slug(s)}", "sft", s) for s in cfg.extra_sft_students]


def training_overrides(cfg: ExperimentConfig, run: Training) -> dict[str, Any]:
    """The config changes a training of the run makes: its method (which also picks its learning
    rate, `train.method_lr`, as ray_jobs/train.py does)."""
    return {"train.method": run.method}


def evaluated_models(cfg: ExperimentConfig, layout: RunLayout, runs: list[Training]) -> dict[str, Evaluated]:
    k = cfg.prompt.few_shot
    models = {"teacher": Evaluated(cfg.teacher, k, endpoint=cfg.curate.engine.backend == "openai"),
              "base": Evaluated(cfg.student, k)}
    models.update({f"base@{model_slug(s)}": Evaluated(s, k) for s in cfg.extra_sft_students})
    models.update({t.name: Evaluated(str(layout.train(t.name).final), 0) for t in reversed(runs)})
    return models


def _curate(cfg: ExperimentConfig, layout: RunLayout) -> dict[str, Any]:
    s = curate(cfg, layout.curate.folder)
    cost = {"tokens": s["tokens_generated"], "wall_seconds": s["wall_seconds"],
            "accelerator_hours": s["accelerator_hours"]}
    # A teacher behind an endpoint: what the server counted (requests sent, retries included; prompt
    # and completion tokens from `usage`), summed over the groups written, in place of GPU time.
    endpoint = s.get("teacher_endpoint")
    if endpoint:
        cost.update({k: endpoint[k] for k in ("requests", "prompt_tokens", "completion_tokens")})
    return cost


def _train(cfg: ExperimentConfig, layout: RunLayout, run: Training, out: TrainOutput, cluster_gpus: int,
           step_logger: dict[str, str] | None) -> dict[str, Any]:
    start = time.time()
    metrics = train(with_overrides(cfg, training_overrides(cfg, run)), layout.curate.folder, out.folder,
                    student=run.student, step_logger=step_logger)
    return _cost(int(metrics.get("tokens", 0)), time.time() - start, cfg.train.resources, cluster_gpus, 1,
                 cfg.train.num_workers)


def _evaluate(cfg: ExperimentConfig, model: Evaluated, splits: dict[str, tuple[DatasetConfig, EvalOutput]]
              ) -> dict[str, Any]:
    if model.endpoint:  # the teacher answers from its server in evaluation as in curation
        cfg = with_overrides(cfg, {"eval.engine": cfg.curate.engine.model_dump(), "eval.resources.use_gpu": False})
    metrics = evaluate_splits(cfg, _local(model.path), splits, few_shot=model.few_shot)
    # What the pool's actors held while they lived (generation/ledger.py), not wall x a GPU count.
    return {"tokens": sum(m["tokens_generated"] for m in metrics.values()),
            "wall_seconds": round(sum(m["wall_seconds"] for m in metrics.values()), 2),
            "accelerator_hours": round(sum(m.get("accelerator_seconds", 0.0) for m in metrics.values()) / 3600, 4)}


def claim_run(cfg: ExperimentConfig, output: str | Path, *, restart: bool = False) -> RunLayout:
    """Make `output` this run's before Ray starts (`advdistill.rerun`): a rerun with the same
    settings continues it; other settings are refused, naming the fields, unless `restart`
    (every stage starts over). Each stage checks its own folder again when it starts."""
    layout = RunLayout(resolved(output))
    claim(layout.root, run_fingerprint(cfg), layout.owned, restart=restart)
    return layout


def run(cfg: ExperimentConfig, output: str | Path, *, serve: bool = False, restart: bool = False) -> dict[str, Any]:
    import ray  # Ray: the driver's cluster, not needed to import the run's helpers

    layout = claim_run(cfg, output, restart=restart)
    layout.config.write_text(dump_config(cfg))
    manifest = RunManifest(layout.manifest, cfg)
    tracker = manifest.tracker = open_tracking(cfg, layout.root, manifest.data["tracking"])
    tracker.log_config(cfg.model_dump(mode="json"))
    manifest.save()
    cluster_gpus = int(ray.cluster_resources().get("GPU", 0))
    # Both generation pools are sized now: an autoscaling cluster without their max_actors is an
    # error before curation, not after it when evaluation starts (generation/pool.py).
    check_pools(cfg)
    try:
        report = _stages(cfg, layout, manifest, tracker, cluster_gpus)
    except BaseException:
        tracker.finish(failed=True)
        manifest.save()
        raise
    tracker.finish(artifacts=[layout.report, layout.manifest])
    print(report.read_text().split("## Behaviour")[0], flush=True)
    print(f"[distill] report: {report}", flush=True)
    if tracker.enabled:
        print(f"[distill] tracked in {tracker.name}: {tracker.uri} (run {tracker.run_id})", flush=True)
    if serve:
        models = evaluated_models(cfg, layout, trainings(cfg))
        serve_models(cfg, layout, {name: m.path for name, m in models.items()},
                     {name: m.few_shot > 0 for name, m in models.items()}, manifest)
    return manifest.data


def _stages(cfg: ExperimentConfig, layout: RunLayout, manifest: RunManifest, tracker: RunTracker | NoTracking,
            cluster_gpus: int) -> PathLike:
    """Every stage not done yet, in order; the report at the end."""
    manifest.stage("curate", layout.curate.is_complete(), _curate, cfg, layout, actors=GENERATION,
                   track=partial(tracked_curation, layout))
    runs = trainings(cfg)
    for t in runs:
        out = layout.train(t.name)
        manifest.stage(f"train-{t.name}", out.is_complete(), _train, cfg, layout, t, out, cluster_gpus,
                       tracker.step_logger_args(f"train-{t.name}"), actors=TRAIN_WORKER,
                       track=partial(tracked_training, out))

    models = evaluated_models(cfg, layout, runs)
    # `name`: as configured, for the report (`path` is where this run found it: under `ray job
    # submit`, inside the job's unpacked working directory).
    manifest.data["models"] = {name: {"path": _local(m.path), "name": configured_name(m.path), "few_shot": m.few_shot}
                               for name, m in models.items()}
    datasets = [cfg.eval.test, *cfg.eval.ood]
    for name, model in models.items():
        splits = {split_label(d): (d, layout.eval(name, split_label(d))) for d in datasets}
        done = all(out.is_complete() for _, out in splits.values())
        manifest.stage(f"eval-{name}", done, _evaluate, cfg, model, splits, actors=GENERATION,
                       track=partial(tracked_evaluation, model, splits))
    write_run_cards(layout)  # final/README.md with these evaluations, and curate/'s dataset card
    return write_report(layout.root)


def tracked_curation(layout: RunLayout) -> Tracked:
    summary = json.loads(layout.curate.summary.read_text())
    keep = ("prompts_read", "prompts_written", "kept", "dropped", "quarantined", "per_sample_accuracy", "format_ok",
            "tokens_generated", "accelerator_hours")
    return Tracked(metrics=numbers(summary, keep=keep), params={"teacher": summary["teacher"]},
                   artifacts=[layout.curate.summary])


def tracked_training(out: TrainOutput) -> Tracked:
    result = json.loads(out.result.read_text())
    return Tracked(metrics={f"final/{k}": v for k, v in numbers(result).items()},
                   params={"final_checkpoint": str(out.final)}, artifacts=[out.result])


def tracked_evaluation(model: Evaluated, splits: dict[str, tuple[DatasetConfig, EvalOutput]]) -> Tracked:
    metrics: dict[str, float] = {}
    for label, (_, out) in splits.items():
        metrics.update(numbers(json.loads(out.metrics.read_text()), prefix=f"{label}/"))
    return Tracked(metrics=metrics, params={"model": _local(model.path), "few_shot": model.few_shot},
                   artifacts=[out.metrics for _, out in splits.values()])
def serving_args(cfg: ExperimentConfig, layout: RunLayout, paths: dict[str, str], base: dict[str, bool],
                 token_file: Path | None = None) -> dict[str, Any]:
    """`build_app`'s arguments for a run's models (`serve_models`), secure by default: the
    checkpoint root is the run folder (a request names nothing outside it; a base model outside it
    is served as configured, by its absolute path), on-demand loading stays off unless
    `serve.on_demand` asks for it, and on an address other than loopback without a token
    (`serve.token_env`) one is made and stored where only its owner reads it (`token_file`)."""
    import os
    import tempfile

    options: dict[str, Any] = {"num_cpus": 0.5}  # tiny CPU models share the cores; build_app adds GPUs
    root = str(layout.root) if is_uri(layout.root) else str(Path(layout.root).resolve())
    if is_uri(layout.root):
        relative = {name: p[len(root) + 1:] for name, p in paths.items() if is_uri(p) and p.startswith(root + "/")}
        # The builder reads a local YAML; the replicas get the config itself, not the file.
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="advdistill-serve-", delete=False) as handle:
            handle.write(dump_config(cfg))
        config_path = handle.name
    else:
        local = {name: Path(p).resolve() for name, p in paths.items() if Path(p).is_dir()}
        # inside the run folder: relative to it; a base model elsewhere: by its absolute path
        relative = {name: (os.path.relpath(p, root) if p.is_relative_to(root) else str(p)) for name, p in local.items()}
        config_path = str(layout.config)
    left_out = sorted(set(paths) - set(relative))
    if left_out:
        print(f"[distill] not served (not a model folder here, or outside {root}): {left_out}", flush=True)
    token_env, api_options = cfg.serve.token_env, None
    token = os.environ.get(token_env) or None
    if token is None and not is_loopback(cfg.serve.host):
        token, where = stored_token(token_file or TOKEN_FILE)
        print(f"[distill] {cfg.serve.host} is not a loopback address: the API takes the bearer token stored in "
              f"{where} (Authorization: Bearer $(cat {where}))", flush=True)
    if token is not None:  # the ingress replica's environment, by name (replicas do not inherit the driver's)
        api_options = {"runtime_env": {"env_vars": {token_env: token}}}
    print(f"[distill] {auth_line(cfg.serve.host, token, token_env)}", flush=True)
    return {"config": config_path, "checkpoint_root": root, "api_ray_actor_options": api_options,
            "models": [{"name": name, "path": rel, "base_model": base[name], "ray_actor_options": options}
                       for name, rel in relative.items()]}


def serve_models(cfg: ExperimentConfig, layout: RunLayout, paths: dict[str, str], base: dict[str, bool],
                 manifest: RunManifest | None = None) -> None:
    """Serve the run's checkpoints behind the evaluation API until interrupted (`serving_args`):
    the local model folders of a local run; the trained models of a run on a URI, each replica
    fetching its model to its own node (`storage.local_model`). Replicas ask for
    `serve.custom_resources` and, where the cluster has GPUs, `serve.gpus_per_replica`
    (`serve.capacity`: an infeasible plan fails before anything starts)."""
    from ray import serve  # Ray Serve and FastAPI: loaded only when a run is served

    from advdistill.serve.app import build_app  # the API (Ray Serve, FastAPI): only when a run is served

    args = serving_args(cfg, layout, paths, base)
    relative = {m["name"]: m["path"] for m in args["models"]}
    app = build_app(args)  # a GPU plan the cluster cannot place fails here, before Serve starts
    since = now_ms()
    serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port})
    serve.run(app, name="advdistill", route_prefix="/")
    if manifest is not None:
        manifest.data["serve"] = {"models": sorted(relative), "http": f"{cfg.serve.host}:{cfg.serve.port}",
                                  "nodes": actor_nodes(f"{SERVE_REPLICA}advdistill:model-", since)}
        manifest.record_nodes()
        manifest.save()
    print(f"[distill] serving {sorted(relative)} on http://{cfg.serve.host}:{cfg.serve.port} (Ctrl-C to stop)",
          flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()
