"""The end-to-end driver (SPEC §1, §9b): curate → train AdvDistill and the SFT baseline →
evaluate teacher, student base, SFT and AdvDistill in and out of distribution → report →
optionally serve. Each stage is skipped when its output is complete, so a rerun after a failure
continues where the last one stopped.

    OUTPUT/curate/  OUTPUT/train-advdistill/  OUTPUT/train-sft/  OUTPUT/eval/  OUTPUT/report/
    OUTPUT/run.json   what ran, where, and what each stage cost
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from advdistill.config import DatasetConfig, ExperimentConfig, dump_config


def split_label(ds: DatasetConfig) -> str:
    return f"{ds.name}-{ds.split}"


class RunManifest:
    """OUTPUT/run.json: the run's models, splits and per-stage costs, rewritten as stages end."""

    def __init__(self, output: Path, cfg: ExperimentConfig):
        self.path = output / "run.json"
        previous = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.data: dict[str, Any] = {
            "name": cfg.name,
            "train_dataset": split_label(cfg.curate.dataset),
            "splits": [split_label(cfg.eval.test)] + [split_label(d) for d in cfg.eval.ood],
            "ood": [split_label(d) for d in cfg.eval.ood],
            "models": {},
            "stages": previous.get("stages", {}),
        }

    def stage(self, name: str, done: bool, run: Callable[[], dict[str, Any]]) -> None:
        """Run a stage unless done; record its cost (tokens, wall time, accelerator-hours)."""
        if done:
            print(f"[distill] {name}: done earlier, skipped", flush=True)
            self.data["stages"].setdefault(name, {})["skipped"] = True
        else:
            print(f"[distill] {name}: running", flush=True)
            start = time.time()
            cost = run() or {}
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


def _gpus(resources, cluster_gpus: int, per_worker: int, workers: int) -> int:
    use_gpu = resources.use_gpu if resources.use_gpu is not None else cluster_gpus > 0
    return per_worker * workers if use_gpu else 0


def run(cfg: ExperimentConfig, output: str | Path, *, serve: bool = False) -> dict[str, Any]:
    import ray

    from advdistill.evaluation.evaluator import evaluate_splits
    from advdistill.report import write_report
    from advdistill.teacher.stage import curate
    from advdistill.train.trainer import train

    output = Path(output).resolve()
    output.mkdir(parents=True, exist_ok=True)
    (output / "config.yaml").write_text(dump_config(cfg))
    manifest = RunManifest(output, cfg)
    cluster_gpus = int(ray.cluster_resources().get("GPU", 0))

    curate_dir = output / "curate"
    summary_path = curate_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    curated = bool(summary) and summary["prompts_written"] == summary["prompts_read"]

    def run_curate() -> dict[str, Any]:
        s = curate(cfg, curate_dir)
        return {"tokens": s["tokens_generated"], "wall_seconds": s["wall_seconds"], "accelerator_hours": s["accelerator_hours"]}

    manifest.stage("curate", curated, run_curate)

    # (run name, mode, student): AdvDistill and the SFT baseline on the student, SFT on extras.
    trainings = [("advdistill", "advdistill", cfg.student)]
    if cfg.sft_baseline:
        trainings.append(("sft", "sft", cfg.student))
    trainings += [(f"sft@{model_slug(s)}", "sft", s) for s in cfg.extra_sft_students]
    for name, mode, student in trainings:
        folder = output / f"train-{name}"

        def run_train(mode: str = mode, student: str = student, folder: Path = folder) -> dict[str, Any]:
            mode_cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"mode": mode})})
            start = time.time()
            metrics = train(mode_cfg, curate_dir, folder, student=student)
            wall = time.time() - start
            gpus = _gpus(cfg.train.resources, cluster_gpus, 1, cfg.train.num_workers)
            return {"tokens": int(metrics.get("tokens", 0)), "wall_seconds": round(wall, 2),
                    "accelerator_hours": round(wall * gpus / 3600, 4)}

        manifest.stage(f"train-{name}", (folder / "final").is_dir() and (folder / "result.json").is_file(), run_train)

    # Base models (teacher, students) get k-shot prompts; distilled students zero-shot.
    k = cfg.prompt.few_shot
    models = {"teacher": (cfg.teacher, k), "base": (cfg.student, k)}
    models.update({f"base@{model_slug(s)}": (s, k) for s in cfg.extra_sft_students})
    models.update({name: (str(output / f"train-{name}" / "final"), 0) for name, _, _ in reversed(trainings)})
    manifest.data["models"] = {name: {"path": _local(path), "few_shot": fs} for name, (path, fs) in models.items()}
    datasets = [cfg.eval.test, *cfg.eval.ood]
    for name, (path, few_shot) in models.items():
        splits = {split_label(d): (d, output / "eval" / f"{name}-{split_label(d)}") for d in datasets}

        def run_eval(path: str = path, few_shot: int = few_shot, splits: dict = splits) -> dict[str, Any]:
            metrics = evaluate_splits(cfg, _local(path), splits, few_shot=few_shot)
            wall = sum(m["wall_seconds"] for m in metrics.values())
            gpus = _gpus(cfg.eval.resources, cluster_gpus, cfg.eval.engine.tensor_parallel_size, 1)
            return {"tokens": sum(m["tokens_generated"] for m in metrics.values()), "wall_seconds": round(wall, 2),
                    "accelerator_hours": round(wall * gpus / 3600, 4)}

        done = all((folder / "metrics.json").is_file() for _, folder in splits.values())
        manifest.stage(f"eval-{name}", done, run_eval)

    report = write_report(output)
    print((output / "report" / "report.md").read_text().split("## Behaviour")[0], flush=True)
    print(f"[distill] report: {report}", flush=True)
    if serve:
        serve_models(cfg, output / "config.yaml", {name: path for name, (path, _) in models.items()},
                     {n: fs > 0 for n, (_, fs) in models.items()})
    return manifest.data


def serve_models(cfg: ExperimentConfig, config_path: Path, paths: dict[str, str], base: dict[str, bool]) -> None:
    """Serve the run's local checkpoints behind the evaluation API until interrupted."""
    import os

    from ray import serve

    from advdistill.serve.app import build_app

    import ray

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
