"""What every entry point shares: `--config`, repeated `--set dotted.key=value`, `--print-config`
(the resolved config as YAML), a `--help` that lists every config field (key, type, the value the
chosen config gives it, the code default where they differ, description), and checking inputs and
outputs before Ray starts (`check_inputs`: the models and hub datasets the config names;
`check_output_dir`: a one-line error, not a traceback after Ray's start-up). Connecting to Ray is
`advdistill.local_ray.init_ray`."""

from __future__ import annotations

import argparse
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterable, Iterator

from pydantic import BaseModel

from advdistill.config import REPO, ConfigError, ExperimentConfig, dump_config, load_config, with_overrides
from advdistill.preflight import MODEL_FILES, TOKENIZER_FILES, PreflightError, check_dataset, check_model
from advdistill.storage import is_uri, location
from advdistill.task_declaration import check_source

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


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _value(cfg: BaseModel, dotted: str) -> Any:
    for key in dotted.split("."):
        cfg = getattr(cfg, key)
    return cfg


def config_help(cfg: ExperimentConfig | None = None, source: str = "") -> str:
    """Every config field: `key = value  (type)`, the value `cfg`'s (from `source`: the chosen
    --config and --set) with the code default beside it where they differ; no cfg: the defaults."""
    header = "config fields (set with --set KEY=VALUE; defaults are the method's, docs/method.md)"
    lines = [f"{header}; values from {source}, code defaults beside those it changes:" if cfg else f"{header}:"]
    for key, kind, default, description in config_fields(ExperimentConfig):
        value = _value(cfg, key) if cfg is not None else default
        beside = f"; code default {_short(default)}" if cfg is not None and value != default else ""
        lines.append(f"  {key} = {_short(value)}  ({kind}{beside})")
        lines.append(f"      {description}")
    return "\n".join(lines)


class ConfigArgumentParser(argparse.ArgumentParser):
    """An entry point's parser: `--help` shows the chosen config's values (`config_help`), and
    `--print-config` needs none of the entry point's required flags."""

    def parse_args(self, args: Iterable[str] | None = None, namespace: Any = None) -> argparse.Namespace:
        args = list(sys.argv[1:] if args is None else args)
        early = argparse.ArgumentParser(add_help=False)
        for action in self._actions:
            if action.dest in ("config", "overrides", "print_config"):
                early._add_action(action)
        chosen, _ = early.parse_known_args(args)
        if "-h" in args or "--help" in args:
            self.epilog = _help_for(chosen)
        if chosen.print_config:
            for action in self._actions:
                action.required = False
        return super().parse_args(args, namespace)


def _help_for(chosen: argparse.Namespace) -> str:
    source = " + ".join([chosen.config, *(f"--set {text}" for text in chosen.overrides)])
    try:
        return config_help(load_config(_config_path(chosen.config), chosen.overrides), source)
    except ConfigError as err:
        return f"(the chosen config does not load: {err})\n\n{config_help()}"


def make_parser(description: str) -> argparse.ArgumentParser:
    parser = ConfigArgumentParser(
        description=description, epilog=config_help(), formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"experiment YAML (default: {DEFAULT_CONFIG})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set train.lr=1e-5 (repeatable)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (the file, then --set and this entry point's flags) as YAML "
                             "and exit")
    return parser


def load_from_args(args: argparse.Namespace, extra: list[str] | None = None) -> ExperimentConfig:
    """The config from --config/--set, plus entry-point flags turned into overrides; with
    --print-config, printed as YAML and the entry point ends."""
    try:
        cfg = load_config(_config_path(args.config), [*(extra or []), *args.overrides])
    except ConfigError as err:
        raise SystemExit(f"error: {err}") from None
    if getattr(args, "print_config", False):
        print(dump_config(cfg), end="", flush=True)
        raise SystemExit(0)
    try:
        check_source(cfg.task)  # a declared task's file: its mapped columns and its splits
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    return with_overrides(cfg, {key: _repo_path(getattr(cfg, key)) for key in ("teacher", "student")})


def _config_path(text: str) -> Path:
    path = Path(text)
    if not path.is_absolute() and not path.exists() and (REPO / path).exists():
        path = REPO / path  # a relative default works from any working directory
    return path


def check_inputs(cfg: ExperimentConfig, models: Iterable[str] = (), datasets: Iterable[str] = (),
                 path_option: str | None = None) -> None:
    """The models and hub datasets that these config fields name exist or can be fetched
    (`advdistill.preflight`), checked before Ray starts: one line naming the field and exit 1
    otherwise. `models`: teacher, student, extra_sft_students; `datasets`: curate.dataset,
    eval.test, eval.ood; `path_option`: how this entry point takes a local dataset file."""
    # A teacher behind an OpenAI endpoint is only its tokenizer here.
    endpoint_teacher = cfg.curate.engine.backend == "openai"
    for field in models:
        for label, value in _entries(field, _value(cfg, field)):
            check_model_flag(label, value, tokenizer_only=field == "teacher" and endpoint_teacher)
    for field in datasets:
        check_dataset_flags(field, [dataset for _, dataset in _entries(field, _value(cfg, field))], path_option)


def check_model_flag(label: str, value: str, tokenizer_only: bool = False) -> None:
    """A model named by a config field or a flag (`--model`): exits with one line if it is not a
    model folder, a URI of one, or a hub id this machine can fetch or has cached."""
    try:
        check_model(label, value, TOKENIZER_FILES if tokenizer_only else MODEL_FILES)
    except PreflightError as err:
        raise SystemExit(f"error: {err}") from None


def check_dataset_flags(label: str, datasets: Iterable[Any], path_option: str | None = None) -> None:
    """Datasets that come from the hub can be fetched or are cached; one line and exit 1 otherwise."""
    datasets = list(datasets)
    try:
        for i, dataset in enumerate(datasets):
            check_dataset(label if len(datasets) == 1 else f"{label}[{i}]", dataset, path_option)
    except PreflightError as err:
        raise SystemExit(f"error: {err}") from None


def _entries(field: str, value: Any) -> list[tuple[str, Any]]:
    return [(f"{field}[{i}]", v) for i, v in enumerate(value)] if isinstance(value, list) else [(field, value)]


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

