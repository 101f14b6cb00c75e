"""Experiment tracking with Weights & Biases (`tracking.backend: wandb`; the `wandb` extra).

The same record as MLflow's (`advdistill.run.tracking`), in W&B's terms: a `distill.py` run is a
W&B *group* (named `<name>:<folder>`) holding one run for the whole (`job_type: run`: the config,
the report) and one run per stage (`job_type: stage`: its cost and figures as the run's summary,
its files saved with the run); rank 0 of each training logs every optimizer step into its stage's
run, live. `tracking.experiment` is the W&B project.

`WANDB_MODE=offline` (W&B's own switch) writes everything as files under `OUTPUT/wandb/`, nothing
leaves the machine; `wandb sync OUTPUT/wandb/offline-run-*` uploads them later. A stage's run is
opened by whoever logs to it (the Train worker, then the driver with the summary): offline, each
opening is its own folder with the same run id, which `wandb sync` joins into one run. The run
ids live in run.json, so a rerun logs into the same runs. Tracking never fails a stage: an error
is printed and the run goes on.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any, Iterable

from advdistill.run.tracking_values import flatten, metric_name, numbers
from advdistill.storage import PathLike, is_uri


def new_run_id() -> str:
    """A W&B run id (lowercase letters and digits), chosen here so that run.json can keep it."""
    return secrets.token_hex(6)


def _init(settings: dict[str, Any], run_id: str, name: str, job_type: str, config: dict[str, Any] | None = None):
    import wandb  # W&B: the optional wandb extra

    return wandb.init(project=settings["project"], group=settings["group"], dir=settings["dir"], id=run_id,
                      name=name, job_type=job_type, config=config, resume="allow", reinit="create_new")


class WandbStepLogger:
    """What a Train worker (rank 0) uses to log each optimizer step into its stage's W&B run."""

    def __init__(self, run_id: str, name: str, **settings: Any):
        self.run = _init(settings, run_id, name, "stage")

    def log(self, metrics: dict[str, Any], step: int) -> None:
        try:
            self.run.log({metric_name(k): v for k, v in numbers(metrics).items() if k != "step"}, step=step)
        except Exception as err:  # noqa: BLE001 - tracking never stops training
            print(f"[tracking] could not log step {step}: {type(err).__name__}: {err}", flush=True)


class WandbTracker:
    """The W&B runs of one `distill.py` run (see the module docstring); the same calls as
    `advdistill.run.tracking.RunTracker`."""

    enabled = True
    name = "W&B"

    def __init__(self, project: str, root: PathLike, run_name: str, state: dict[str, Any]):
        if state.get("backend") != "wandb":  # a first run, or one tracked by another backend
            state.clear()
            state.update(backend="wandb", run_id=new_run_id(), stages={})
        self.state = state
        folder = None if is_uri(root) else str(Path(root).resolve())
        self.settings = {"project": project, "group": run_name, "dir": folder}
        self.run_id = state["run_id"]
        self.uri = f"project {project}, group {run_name}" + (f", files in {folder}/wandb" if folder else "")
        self.run = _init(self.settings, self.run_id, run_name, "run")

    def stage_run(self, name: str) -> str:
        return self.state.setdefault("stages", {}).setdefault(name, new_run_id())

    def step_logger_args(self, name: str) -> dict[str, Any]:
        """What a Train worker needs to log its steps into stage `name`'s run
        (`advdistill.run.tracking.StepLogger` takes them)."""
        return {"backend": "wandb", "run_id": self.stage_run(name), "name": name, **self.settings}

    def end_stage(self, name: str, *, metrics: dict[str, float] | None = None, params: dict[str, Any] | None = None,
                  artifacts: Iterable[PathLike] = (), failed: bool = False) -> None:
        def log() -> None:
            run = _init(self.settings, self.stage_run(name), name, "stage", config=params or None)
            run.summary.update({metric_name(k): v for k, v in (metrics or {}).items()})
            _save(run, artifacts)
            run.finish(exit_code=1 if failed else 0)

        self._safe(log)

    def log_config(self, config: dict[str, Any]) -> None:
        self._safe(lambda: self.run.config.update(flatten(config), allow_val_change=True))

    def finish(self, artifacts: Iterable[PathLike] = (), failed: bool = False) -> None:
        def end() -> None:
            _save(self.run, artifacts)
            self.run.finish(exit_code=1 if failed else 0)

        self._safe(end)

    @staticmethod
    def _safe(fn) -> None:
        try:
            fn()
        except Exception as err:  # noqa: BLE001 - tracking is a record, never a reason to fail a run
            print(f"[tracking] W&B failed: {type(err).__name__}: {err}", flush=True)


def _save(run: Any, artifacts: Iterable[PathLike]) -> None:
    """Files and folders (their files) saved with a run; files on a URI stay there."""
    for path in artifacts:
        if is_uri(path):
            continue
        path = Path(path)
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else []
        for file in files:
            run.save(str(file), base_path=str(path.parent), policy="now")
