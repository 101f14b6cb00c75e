"""Experiment tracking, by `tracking.backend`: `mlflow` (the `tracking` extra; `auto`, the default,
is MLflow where it is installed), `wandb` (Weights & Biases, the `wandb` extra:
`advdistill.run.tracking_wandb`, the same record in W&B's terms) or `none`.

One MLflow run per `distill.py` run, and a nested run per stage:

    <name>                     the config (flattened params), the report and its plots
    ├── curate                 counts, per-sample accuracy, tokens, cost; summary.json (histograms)
    ├── train-advdistill, …    every optimizer step from rank 0, live (loss terms, weight entropy,
    │                          lr, grad norm, tokens/s, val loss); result.json; the final export's path
    └── eval-teacher, …        per split: accuracy and its interval, verbosity, degeneracy, template

The embedded default logs to a file store inside the run folder (`OUTPUT/mlruns`;
`MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri OUTPUT/mlruns` opens it, with the full
`mlflow` package); `tracking.uri` sends runs to a server. The run ids
are kept in `run.json`, so a rerun that continues a run logs into the same MLflow runs. Only
`MlflowClient` is used (no global active run), so the driver and a Train worker on another node
log to the same run without sharing state. Tracking never fails a stage: an error is printed and
the run goes on without it.
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path
from typing import Any, Iterable

from advdistill.run.tracking_values import flatten, metric_name, numbers
from advdistill.run.tracking_wandb import WandbStepLogger, WandbTracker
from advdistill.storage import PathLike, is_uri

__all__ = ["NoTracking", "RunTracker", "StepLogger", "WandbTracker", "flatten", "metric_name", "numbers",
           "open_tracking"]

MAX_PARAM_CHARS = 500  # MLflow's limit on a param value
BATCH = 100  # MLflow's limit on params per log_batch call


def allow_file_store(uri: str) -> None:
    """MLflow 3 refuses its file store unless asked (it prefers a database); a run folder's own
    `mlruns/` is what the embedded default wants: no database to set up, files beside the run."""
    if uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")


def mlflow_available() -> bool:
    return importlib.util.find_spec("mlflow") is not None


def wandb_available() -> bool:
    return importlib.util.find_spec("wandb") is not None


class StepLogger:
    """What a Train worker (rank 0) uses to log each optimizer step into its stage's run: the
    arguments are the tracker's `step_logger_args` (MLflow: uri and run id; W&B: `backend`
    and its settings)."""

    def __new__(cls, uri: str | None = None, run_id: str = "", backend: str = "mlflow", **settings: Any):
        if backend == "wandb":
            return WandbStepLogger(run_id, **settings)
        return super().__new__(cls)

    def __init__(self, uri: str, run_id: str):
        allow_file_store(uri)
        from mlflow.tracking import MlflowClient  # mlflow: the optional tracking extra

        self.client, self.run_id = MlflowClient(uri), run_id

    def log(self, metrics: dict[str, Any], step: int) -> None:
        from mlflow.entities import Metric  # mlflow: the optional tracking extra

        now = int(time.time() * 1000)
        batch = [Metric(metric_name(k), v, now, step) for k, v in numbers(metrics).items() if k != "step"]
        try:
            self.client.log_batch(self.run_id, metrics=batch)
        except Exception as err:  # noqa: BLE001 - tracking never stops training
            print(f"[tracking] could not log step {step}: {type(err).__name__}: {err}", flush=True)


class NoTracking:
    """Tracking off (`tracking.backend: none`, auto without MLflow, or no usable store): every
    call does nothing."""

    enabled = False
    name = "nothing"

    def __getattr__(self, _name: str):
        return lambda *args, **kwargs: None


class RunTracker:
    """The MLflow run of one `distill.py` run, and its stage runs (see the module docstring)."""

    enabled = True
    name = "MLflow"

    def __init__(self, uri: str, experiment: str, run_name: str, state: dict[str, Any]):
        allow_file_store(uri)
        from mlflow.tracking import MlflowClient  # mlflow: the optional tracking extra

        self.uri, self.client, self.state = uri, MlflowClient(uri), state
        found = self.client.get_experiment_by_name(experiment)
        self.experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
        if state.get("run_id") and state.get("uri") == uri:
            self.run_id = state["run_id"]  # a continued run: same MLflow run
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            self.run_id = self.client.create_run(self.experiment_id, run_name=run_name).info.run_id
            state.clear()
            state.update(uri=uri, experiment_id=self.experiment_id, run_id=self.run_id, stages={})
        self._stage_name: str | None = None

    # -- stage runs ----------------------------------------------------------------------

    def stage_run(self, name: str) -> str:
        """The nested run of stage `name` (created once, reused by a rerun)."""
        stages = self.state.setdefault("stages", {})
        if name not in stages:
            run = self.client.create_run(self.experiment_id, run_name=name,
                                         tags={"mlflow.parentRunId": self.run_id, "advdistill.stage": name})
            stages[name] = run.info.run_id
        return stages[name]

    def step_logger_args(self, name: str) -> dict[str, str]:
        """What a Train worker needs to log its steps into stage `name`'s run."""
        return {"uri": self.uri, "run_id": self.stage_run(name)}

    def end_stage(self, name: str, *, metrics: dict[str, float] | None = None, params: dict[str, Any] | None = None,
                  artifacts: Iterable[PathLike] = (), failed: bool = False) -> None:
        run_id = self.stage_run(name)
        self._safe(self._log, run_id, metrics or {}, params or {}, artifacts)
        self._safe(self.client.set_terminated, run_id, "FAILED" if failed else "FINISHED")

    # -- the parent run ------------------------------------------------------------------

    def log_config(self, config: dict[str, Any]) -> None:
        params = {k: (str(v)[:MAX_PARAM_CHARS]) for k, v in flatten(config).items()}
        self._safe(self._log, self.run_id, {}, params, ())

    def finish(self, artifacts: Iterable[PathLike] = (), failed: bool = False) -> None:
        self._safe(self._log, self.run_id, {}, {}, artifacts)
        self._safe(self.client.set_terminated, self.run_id, "FAILED" if failed else "FINISHED")

    # -- plumbing ------------------------------------------------------------------------

    def _log(self, run_id: str, metrics: dict[str, float], params: dict[str, Any], artifacts: Iterable[PathLike]):
        from mlflow.entities import Metric, Param  # mlflow: the optional tracking extra

        now = int(time.time() * 1000)
        items = [Metric(metric_name(k), v, now, 0) for k, v in metrics.items()]
        for i in range(0, len(items), BATCH * 10):
            self.client.log_batch(run_id, metrics=items[i : i + BATCH * 10])
        existing = self.client.get_run(run_id).data.params
        plist = [Param(metric_name(k), str(v)[:MAX_PARAM_CHARS]) for k, v in params.items() if metric_name(k) not in existing]
        for i in range(0, len(plist), BATCH):
            self.client.log_batch(run_id, params=plist[i : i + BATCH])
        for path in artifacts:
            if is_uri(path):
                continue  # a file store's artifacts are local; a run on a URI keeps its files there
            path = Path(path)
            if path.is_dir():
                self.client.log_artifacts(run_id, str(path), artifact_path=path.name)
            elif path.is_file():
                self.client.log_artifact(run_id, str(path))

    def _safe(self, fn, *args) -> None:
        try:
            fn(*args)
        except Exception as err:  # noqa: BLE001 - tracking is a record, never a reason to fail a run
            print(f"[tracking] {getattr(fn, '__name__', fn)} failed: {type(err).__name__}: {err}", flush=True)


def open_tracking(cfg: Any, root: PathLike, state: dict[str, Any]) -> RunTracker | WandbTracker | NoTracking:
    """The run's tracker, by `tracking.backend`: MLflow (auto: where installed) into `tracking.uri`
    or the run folder's own file store; W&B (`advdistill.run.tracking_wandb`); or none. `state`
    (kept in run.json) carries the run ids across reruns."""
    tc = cfg.tracking
    backend = "none" if tc.enabled is False else tc.backend  # tracking.enabled: false, the old switch
    if backend == "auto":
        backend = "mlflow" if mlflow_available() else "none"
    if backend == "none":
        return NoTracking()
    run_name = f"{cfg.name}:{Path(str(root)).name}"
    if backend == "wandb":
        if not wandb_available():
            raise RuntimeError("tracking.backend is wandb but wandb is not installed: pip install 'advdistill[wandb]'")
        try:
            return WandbTracker(tc.experiment, root, run_name, state)
        except Exception as err:  # noqa: BLE001
            print(f"[tracking] off: {type(err).__name__}: {err}", flush=True)
            return NoTracking()
    if not mlflow_available():
        raise RuntimeError("tracking.backend is mlflow but MLflow is not installed: pip install 'advdistill[tracking]'")
    uri = tc.uri
    if uri is None:
        if is_uri(root):
            print("[tracking] off: a file store needs a local run folder; set tracking.uri to a server", flush=True)
            return NoTracking()
        uri = (Path(root).resolve() / "mlruns").as_uri()
    if state.get("backend", "mlflow") != "mlflow":
        state.clear()  # tracked by another backend before: new MLflow runs
    try:
        tracker = RunTracker(uri, tc.experiment, run_name, state)
    except Exception as err:  # noqa: BLE001
        print(f"[tracking] off: {type(err).__name__}: {err}", flush=True)
        return NoTracking()
    state["backend"] = "mlflow"
    return tracker
