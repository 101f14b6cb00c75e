"""What every entry point shares: `--config`, repeated `--set dotted.key=value`, a `--help` that
lists every config field (key, type, default, description), and connecting to Ray (local or the
job's cluster)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Iterator

from pydantic import BaseModel

from advdistill.config import REPO, ConfigError, ExperimentConfig, load_config, with_overrides

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


def init_ray(num_cpus: int | None = None) -> None:
    """Join the job's cluster (`ray job submit` sets RAY_ADDRESS) or start a local one."""
    import ray

    if ray.is_initialized():
        return
    for key, value in RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    env = {key: os.environ[key] for key in RAY_ENV_DEFAULTS}
    kwargs: dict[str, Any] = {"runtime_env": {"env_vars": env}, "log_to_driver": True}
    if not os.environ.get("RAY_ADDRESS"):
        # A local cluster: at least 4 logical CPUs, so that on a 2-core laptop two Train workers,
        # a generation actor and its scoring tasks, or the served models, fit side by side
        # (Ray waits silently for CPUs that never free up otherwise).
        kwargs.update(include_dashboard=False, num_cpus=num_cpus or max(os.cpu_count() or 1, 4))
    ray.init(**kwargs)
