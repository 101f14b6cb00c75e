"""What every entry point shares: `--config`, repeated `--set dotted.key=value`, a `--help` that
lists every config field (key, type, default, description), and checking input and output paths
before Ray starts (`check_output_dir`: a one-line error, not a traceback after Ray's start-up).
Connecting to Ray is `advdistill.local_ray.init_ray`."""

from __future__ import annotations

import argparse
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterator

from pydantic import BaseModel

from advdistill.config import REPO, ConfigError, ExperimentConfig, load_config, with_overrides
from advdistill.storage import is_uri, location

DEFAULT_CONFIG = "configs/tiny.yaml"


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

