"""The end-to-end driver (SPEC §1, §9b): curate → train AdvDistill and the SFT baseline →
evaluate teacher, student base, SFT and AdvDistill in and out of distribution → report →
optionally serve. Each stage is skipped when its output says it is complete
(`advdistill.run_layout`), so a rerun after a failure continues where the last one stopped.
`OUTPUT/run.json` records what ran, where, and what each stage cost.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from advdistill.config import DatasetConfig, ExperimentConfig, ResourcesConfig, dump_config, with_overrides
from advdistill.evaluation.evaluator import EvalOutput
from advdistill.run_layout import RunLayout, split_label
from advdistill.train.trainer import TrainOutput


class RunManifest:
    """OUTPUT/run.json: the run's models, splits and per-stage costs, rewritten as stages end."""

    def __init__(self, path: Path, cfg: ExperimentConfig):
        self.path = path
        previous = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.data: dict[str, Any] = {
            "name": cfg.name,
            "train_dataset": split_label(cfg.curate.dataset),
            "splits": [split_label(cfg.eval.test)] + [split_label(d) for d in cfg.eval.ood],
            "ood": [split_label(d) for d in cfg.eval.ood],
            "models": {},
            "stages": previous.get("stages", {}),
        }

    def stage(self, name: str, done: bool, run: Callable[..., dict[str, Any]], *args: Any) -> None:
        """`run(*args)` unless the stage is done; record its cost (tokens, wall time, accelerator-hours)."""
        if done:
            print(f"[distill] {name}: done earlier, skipped", flush=True)
            self.data["stages"].setdefault(name, {})["skipped"] = True
        else:
            print(f"[distill] {name}: running", flush=True)
            start = time.time()
            cost = run(*args) or {}
            cost.setdefault("wall_seconds", round(time.time() - start, 2))
            self.data["stages"][name] = cost
        self.save()

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
    mode: str  # train.mode (a training method)
    student: str


@dataclass(frozen=True)
class Evaluated:
    path: str  # hub id or local folder
    few_shot: int  # base models get k-shot prompts; distilled students zero-shot


def trainings(cfg: ExperimentConfig) -> list[Training]:
    """AdvDistill and the SFT baseline on the student, SFT on each extra student."""
    runs = [Training("advdistill", "advdistill", cfg.student)]
    if cfg.sft_baseline:
        runs.append(Training("sft", "sft", cfg.student))
    return runs + [Training(f"sft@{model_slug(s)}", "sft", s) for s in cfg.extra_sft_students]


def evaluated_models(cfg: ExperimentConfig, layout: RunLayout, runs: list[Training]) -> dict[str, Evaluated]:
    k = cfg.prompt.few_shot
    models = {"teacher": Evaluated(cfg.teacher, k), "base": Evaluated(cfg.student, k)}
    models.update({f"base@{model_slug(s)}": Evaluated(s, k) for s in cfg.extra_sft_students})
    models.update({t.name: Evaluated(str(layout.train(t.name).final), 0) for t in reversed(runs)})
    return models


def _curate(cfg: ExperimentConfig, layout: RunLayout) -> dict[str, Any]:
    from advdistill.curate.stage import curate

    s = curate(cfg, layout.curate.folder)
    return {"tokens": s["tokens_generated"], "wall_seconds": s["wall_seconds"], "accelerator_hours": s["accelerator_hours"]}


def _train(cfg: ExperimentConfig, layout: RunLayout, run: Training, out: TrainOutput, cluster_gpus: int) -> dict[str, Any]:
    from advdistill.train.trainer import train

    start = time.time()
    metrics = train(with_overrides(cfg, {"train.mode": run.mode}), layout.curate.folder, out.folder, student=run.student)
    return _cost(int(metrics.get("tokens", 0)), time.time() - start, cfg.train.resources, cluster_gpus, 1,
                 cfg.train.num_workers)


def _evaluate(cfg: ExperimentConfig, model: Evaluated, splits: dict[str, tuple[DatasetConfig, EvalOutput]],
              cluster_gpus: int) -> dict[str, Any]:
    from advdistill.evaluation.evaluator import evaluate_splits

    metrics = evaluate_splits(cfg, _local(model.path), splits, few_shot=model.few_shot)
    return _cost(sum(m["tokens_generated"] for m in metrics.values()), sum(m["wall_seconds"] for m in metrics.values()),
                 cfg.eval.resources, cluster_gpus, cfg.eval.engine.tensor_parallel_size, 1)


def run(cfg: ExperimentConfig, output: str | Path, *, serve: bool = False) -> dict[str, Any]:
    import ray

    from advdistill.report import write_report

    layout = RunLayout(Path(output).resolve())
    layout.root.mkdir(parents=True, exist_ok=True)
    layout.config.write_text(dump_config(cfg))
    manifest = RunManifest(layout.manifest, cfg)
    cluster_gpus = int(ray.cluster_resources().get("GPU", 0))

    manifest.stage("curate", layout.curate.is_complete(), _curate, cfg, layout)
    runs = trainings(cfg)
    for t in runs:
        out = layout.train(t.name)
        manifest.stage(f"train-{t.name}", out.is_complete(), _train, cfg, layout, t, out, cluster_gpus)

    models = evaluated_models(cfg, layout, runs)
    manifest.data["models"] = {name: {"path": _local(m.path), "few_shot": m.few_shot} for name, m in models.items()}
    datasets = [cfg.eval.test, *cfg.eval.ood]
    for name, model in models.items():
        splits = {split_label(d): (d, layout.eval(name, split_label(d))) for d in datasets}
        done = all(out.is_complete() for _, out in splits.values())
        manifest.stage(f"eval-{name}", done, _evaluate, cfg, model, splits, cluster_gpus)

    report = write_report(layout.root)
    print(report.read_text().split("## Behaviour")[0], flush=True)
    print(f"[distill] report: {report}", flush=True)
    if serve:
        serve_models(cfg, layout.config, {name: m.path for name, m in models.items()},
                     {name: m.few_shot > 0 for name, m in models.items()})
    return manifest.data


def serve_models(cfg: ExperimentConfig, config_path: Path, paths: dict[str, str], base: dict[str, bool]) -> None:
    """Serve the run's local checkpoints behind the evaluation API until interrupted."""
    import os

    import ray
    from ray import serve

    from advdistill.serve.app import build_app

    local = {name: str(Path(p).resolve()) for name, p in paths.items() if Path(p).is_dir()}
    root = os.path.commonpath(list(local.values()))
    # A GPU per model where the cluster has them; tiny CPU models share the cores.
    options = {"num_gpus": 1} if ray.cluster_resources().get("GPU", 0) else {"num_cpus": 0.5}
    models = [{"name": name, "path": os.path.relpath(p, root), "base_model": base[name], "ray_actor_options": options}
              for name, p in local.items()]
    serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port})
    app = build_app({"config": str(config_path), "models": models, "checkpoint_root": root})
    serve.run(app, name="advdistill", route_prefix="/")
    print(f"[distill] serving {sorted(local)} on http://{cfg.serve.host}:{cfg.serve.port} (Ctrl-C to stop)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()
