"""What every entry point shares: `--config`, repeated `--set dotted.key=value`, a `--help` that
lists every config field (key, type, default, description), checking output folders before Ray
starts (`check_output_dir`: a one-line error, not a traceback after Ray's start-up), and
connecting to Ray (the job's cluster, or a local one that ends with the driver, `kill -9`
included: `advdistill/reaper.py`)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterator

from pydantic import BaseModel

from advdistill.config import REPO, ConfigError, ExperimentConfig, load_config, with_overrides
from advdistill.reaper import RUN_MARKER
from advdistill.storage import is_uri, location

DEFAULT_CONFIG = "configs/tiny.yaml"

# Ray settings the stages rely on (FIELD-NOTES): Ray Train V2 otherwise blocks ~2 s in every
# `ray.train.report`, and repeats every worker print twice.
RAY_ENV_DEFAULTS = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
}


def config_fields(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, str, Any, str]]:
    """(dotted key, type, default, description) of every leaf field of a config section."""
    for name, info in model.model_fields.items():
        key = f"{prefix}{name}"
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from config_fields(annotation, key + ".")
        else:
            default = info.default_factory() if info.default_factory else info.default
            kind = getattr(annotation, "__name__", str(annotation)).replace("typing.", "")
            yield key, kind, default, info.description or ""


def config_help() -> str:
    lines = ["config fields (set with --set KEY=VALUE; defaults are the SPEC's):"]
    for key, kind, default, description in config_fields(ExperimentConfig):
        text = repr(default)
        if len(text) > 60:
            text = text[:57] + "..."
        lines.append(f"  {key} = {text}  ({kind})")
        lines.append(f"      {description}")
    return "\n".join(lines)


def make_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=description, epilog=config_help(), formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"experiment YAML (default: {DEFAULT_CONFIG})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set train.lr=1e-5 (repeatable)")
    return parser


def load_from_args(args: argparse.Namespace, extra: list[str] | None = None) -> ExperimentConfig:
    """The config from --config/--set, plus entry-point flags turned into overrides."""
    path = Path(args.config)
    if not path.is_absolute() and not path.exists() and (REPO / path).exists():
        path = REPO / path  # a relative default works from any working directory
    try:
        cfg = load_config(path, [*(extra or []), *args.overrides])
    except ConfigError as err:
        raise SystemExit(f"error: {err}") from None
    return with_overrides(cfg, {key: _repo_path(getattr(cfg, key)) for key in ("teacher", "student")})


def _repo_path(model: str) -> str:
    """A model folder given relative to the repository (the embedded models) still resolves when
    the entry point runs from another working directory; hub ids are left alone."""
    if not Path(model).exists() and (REPO / model).is_dir():
        return str(REPO / model)
    return model


def check_output_dir(path: str | Path, what: str = "output folder") -> Path | str:
    """`path` exists and is a writable folder, or can be created as one: checked by creating it
    and a probe file in it, before any Ray start-up. Exits with a one-line error otherwise. A URI
    (`s3://…`, `advdistill.storage`) is checked on its store by writing and removing a probe object."""
    if is_uri(str(path)):
        probe = location(str(path)) / f".write-probe-{uuid.uuid4().hex}"
        try:
            probe.write_bytes(b"")
            probe.unlink(missing_ok=True)
        except Exception as err:  # noqa: BLE001 - OSError, credentials, an unknown scheme: all one line
            raise SystemExit(f"error: {what} {path} is not writable: {type(err).__name__}: {err}") from None
        return str(path)
    folder = Path(path).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-probe-"):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise SystemExit(f"error: {what} {folder} is not writable or cannot be created: {reason}") from None
    return folder


def check_input_path(path: str | Path, what: str) -> Path | str:
    """An input file or folder that must exist (local or on a URI): a one-line error before Ray
    starts otherwise."""
    loc = location(str(path)) if not isinstance(path, Path) else path.expanduser()
    try:
        found = loc.exists()
    except Exception as err:  # noqa: BLE001 - an unreachable store is as good as missing here
        raise SystemExit(f"error: {what} {path} cannot be read: {type(err).__name__}: {err}") from None
    if not found:
        raise SystemExit(f"error: {what} {path} does not exist")
    return loc


def _start_reaper() -> None:
    """Mark this driver's local cluster (every process it starts inherits the environment) and
    start `advdistill/reaper.py`, which ends the marked processes once this driver is gone."""
    run_id = os.environ.setdefault(RUN_MARKER, uuid.uuid4().hex)
    subprocess.Popen([sys.executable, str(Path(__file__).with_name("reaper.py")), str(os.getpid()), run_id],
                     start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, close_fds=True)


def driver_env_vars() -> dict[str, str]:
    """The RAY_ENV_DEFAULTS for ray.init's runtime env. Inside `ray job submit`, Ray merges the
    job's runtime env (RAY_JOB_CONFIG_JSON_ENV_VAR) with ray.init's and refuses a key set in both:
    the job's own settings win, these fill in the rest."""
    job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    job_env = (job.get("runtime_env") or {}).get("env_vars") or {}
    return {key: os.environ.get(key, value) for key, value in RAY_ENV_DEFAULTS.items() if key not in job_env}


def init_ray(num_cpus: int | None = None) -> None:
    """Join the job's cluster (`ray job submit` sets RAY_ADDRESS) or start a local one."""
    import ray  # Ray: not loaded by `--help` and the checks that run before it starts

    if ray.is_initialized():
        return
    for key, value in RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    env = driver_env_vars()
    kwargs: dict[str, Any] = {"runtime_env": {"env_vars": env} if env else None, "log_to_driver": True}
    if not os.environ.get("RAY_ADDRESS"):
        # A local cluster: at least 4 logical CPUs, so that on a 2-core laptop two Train workers,
        # a generation actor and its scoring tasks, or the served models, fit side by side
        # (Ray waits silently for CPUs that never free up otherwise).
        kwargs.update(include_dashboard=False, num_cpus=num_cpus or max(os.cpu_count() or 1, 4))
        # The local cluster is this driver's: it must not outlive it, even after a SIGKILL.
        _start_reaper()
    ray.init(**kwargs)
