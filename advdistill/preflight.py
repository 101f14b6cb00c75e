"""What a config names that must exist, checked before any compute: every model (a local folder
with a config.json, a URI of `advdistill.storage`, or a hub id) and every dataset that comes
from the hub. The entry points call these before Ray starts (`advdistill.cli.check_inputs`), so a
typo costs one line, not a whole curation followed by a stack trace ending in a DNS error.

A hub id is resolved on the hub unless the hub is unreachable: `HF_HUB_OFFLINE` (or
`TRANSFORMERS_OFFLINE`, `HF_DATASETS_OFFLINE` for datasets) set, no network, or a failed
resolution. Then it must be in the local Hugging Face cache (`huggingface_hub`'s own cache
lookup). Each failure is a `PreflightError` of one line: the field, its value, why, and what
exists nearby ("did you mean models/tiny-student?").
"""

from __future__ import annotations

import difflib
import functools
import os
from pathlib import Path

from advdistill.config import REPO, DatasetConfig
from advdistill.storage import is_uri, location
from advdistill.tasks import get_task

MODEL_FILES = ("config.json",)  # a transformers model folder
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "config.json")  # a teacher behind an endpoint
HUB_TIMEOUT_S = 10.0  # one resolution; a hub that does not answer in this time counts as unreachable
_TRUE = {"1", "true", "yes", "on"}


class PreflightError(ValueError):
    """An input a config names that does not exist or cannot be reached; one line."""


def offline_reason(*variables: str) -> str | None:
    """Why the hub is not to be asked (an offline variable that is set), or None."""
    for name in ("HF_HUB_OFFLINE", *variables):
        if os.environ.get(name, "").strip().lower() in _TRUE:
            return f"{name}={os.environ[name]}"
    return None


def hub_cache() -> Path:
    """The hub cache the loaders will read (read from the environment now, not at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def is_repo_id(text: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def cached_file(repo_id: str, names: tuple[str, ...], repo_type: str = "model") -> str | None:
    """The first of `names` that the local hub cache holds for `repo_id`, or None."""
    from huggingface_hub import try_to_load_from_cache

    for name in names:
        found = try_to_load_from_cache(repo_id, name, cache_dir=hub_cache(), repo_type=repo_type)
        if isinstance(found, str):
            return found
    return None


@functools.lru_cache(maxsize=None)
def _hub_answer(repo_id: str, repo_type: str) -> str:
    """`found`, `missing`, or `unreachable: why` (each id asked once per process)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    api = HfApi()
    info = api.model_info if repo_type == "model" else api.dataset_info
    try:
        info(repo_id, timeout=HUB_TIMEOUT_S)
    except GatedRepoError:
        return "found"  # it exists; access (HF_TOKEN) is the loader's to report
    except RepositoryNotFoundError:
        return "missing"
    except Exception as err:  # noqa: BLE001 - DNS, refused, timeout, proxy: all mean "not reachable"
        detail = str(err).splitlines()[0] if str(err) else ""
        return f"unreachable: {type(err).__name__}" + (f": {detail}" if detail else "")
    return "found"


def check_model(field: str, value: str, files: tuple[str, ...] = MODEL_FILES) -> None:
    """`value` (the config's `field`) is a model this run can load; PreflightError otherwise."""
    if is_uri(value):
        _check_uri(field, value, files)
        return
    for base in (Path.cwd(), REPO):
        path = (base / value).expanduser() if not Path(value).expanduser().is_absolute() else Path(value).expanduser()
        if path.exists():
            if path.is_dir() and any((path / name).is_file() for name in files):
                return
            kind = "a folder" if path.is_dir() else "a file"
            raise PreflightError(f"{field} = {value}: {kind} without {files[0]}, not a model folder{nearby(value)}")
    local_parent = "/" in value and any((base / value).parent.is_dir() for base in (Path.cwd(), REPO))
    if local_parent or not is_repo_id(value):
        raise PreflightError(f"{field} = {value}: no such folder{nearby(value)}")
    if cached_file(value, files):
        return
    reason = offline_reason()
    if reason is None:
        answer = _hub_answer(value, "model")
        if answer == "found":
            return
        if answer == "missing":
            raise PreflightError(f"{field} = {value}: no such folder here and no such model on the hub"
                                 f"{nearby(value)}")
        reason = answer.removeprefix("unreachable: ")
    raise PreflightError(f"{field} = {value}: no such folder, and the hub is unreachable ({reason}) and its cache "
                         f"({hub_cache()}) does not hold it{nearby(value)}")


def _check_uri(field: str, value: str, files: tuple[str, ...]) -> None:
    try:
        folder = location(value)
        found = any((folder / name).is_file() for name in files)
    except Exception as err:  # noqa: BLE001 - credentials, an unknown scheme, an unreachable store
        raise PreflightError(f"{field} = {value}: cannot be read: {type(err).__name__}: {err}") from None
    if not found:
        raise PreflightError(f"{field} = {value}: no {files[0]} there, not a model folder")


def nearby(value: str, bases: tuple[Path, ...] | None = None) -> str:
    """" (did you mean X?)" from the model folders beside where `value` points (relative to each
    of `bases`: the working directory and the repository) and the hub ids in the local cache; or
    the model folders in the folder it points into; or ""."""
    parent = Path(value).parent
    folders: list[str] = []
    for base in bases or (Path.cwd(), REPO):
        where = parent if parent.is_absolute() else base / parent
        if where.is_dir():
            folders += [str(parent / p.name) if str(parent) != "." else p.name
                        for p in sorted(where.iterdir()) if (p / "config.json").is_file()]
    folders = list(dict.fromkeys(folders))
    close = difflib.get_close_matches(value, folders, n=1, cutoff=0.6)
    if not close:
        close = difflib.get_close_matches(value, cached_repo_ids(), n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]}?)"
    if folders and str(parent) != ".":
        shown = ", ".join(Path(f).name for f in folders[:6]) + (", ..." if len(folders) > 6 else "")
        return f" (model folders in {parent}/: {shown})"
    return ""


def cached_repo_ids(repo_type: str = "model") -> list[str]:
    """Hub ids the local cache holds (its folders are named `models--ORG--NAME`)."""
    prefix = f"{repo_type}s--"
    cache = hub_cache()
    if not cache.is_dir():
        return []
    return [p.name[len(prefix):].replace("--", "/") for p in sorted(cache.iterdir()) if p.name.startswith(prefix)]


def check_dataset(field: str, dataset: DatasetConfig, path_option: str | None = None) -> None:
    """A hub dataset (no `path`) is reachable or cached; PreflightError saying so and showing the
    local-file alternative otherwise. Local files are checked where they are read
    (`advdistill.cli.check_input_path`); built-in generators need nothing."""
    spec = get_task(dataset.name)
    if dataset.path or spec.hub_id is None:
        return
    if spec.hub_id in cached_repo_ids("dataset") or _in_datasets_cache(spec.hub_id):
        return
    reason = offline_reason("HF_DATASETS_OFFLINE")
    if reason is None:
        answer = _hub_answer(spec.hub_id, "dataset")
        if answer == "found":
            return
        reason = answer.removeprefix("unreachable: ") if answer != "missing" else "not found there"
    option = path_option or f"--set {field}.path=FILE"
    raise PreflightError(f"{field}: {dataset.name} {dataset.split} comes from the hub ({spec.hub_id}), unreachable "
                         f"({reason}) and not in the local cache; give a local JSONL or Parquet file with its fields "
                         f"instead: {option}")


def _in_datasets_cache(hub_id: str) -> bool:
    """`datasets` keeps what it prepared under HF_DATASETS_CACHE as `ORG___NAME/` and loads it
    offline from there (its `load_dataset` falls back to the latest cached version)."""
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")).expanduser()
    root = Path(os.environ.get("HF_DATASETS_CACHE", home / "datasets")).expanduser()
    return (root / hub_id.replace("/", "___")).is_dir()
