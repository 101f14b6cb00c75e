"""What a request's `model` names: a configured model (by name), or — with `serve.on_demand` — any
model folder under the checkpoint root, served by the multiplexed `checkpoints` deployment and
named by its path relative to the root (`paths.requested_path`: inside the root, never hidden).
Also what GET /models and /v1/models list, and each model's tokenizer (prompts are checked
against the model's context before anything is generated). No Ray import: model replicas are
reached through the deployment handles given to the catalog."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Awaitable, Callable

from advdistill.serve.errors import NotFound, describe
from advdistill.serve.paths import is_file, is_hidden, requested_path
from advdistill.serve.schemas import ModelList, OnDemand, excerpt
from advdistill.storage import is_uri, local_model, location

MAX_AVAILABLE_LISTED = 200  # checkpoint folders GET /models lists
PICKLED_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
MAX_HEADER_BYTES = 100 * 2**20  # a safetensors header larger than this is not one
AVAILABLE_DEPTH = 5  # how deep under the checkpoint root it looks (runs/NAME/seed-0/train-sft/final)


@dataclass(frozen=True)
class Served:
    """A resolved `model`: the name answers carry (a configured name, or the checkpoint folder
    relative to the root), the replicas that generate for it (a deployment handle), its default
    `few_shot` and its tokenizer."""

    name: str
    handle: Any
    few_shot: int
    tokenizer: Any | None


def checkpoint_folders(root: str, depth: int = AVAILABLE_DEPTH, limit: int = MAX_AVAILABLE_LISTED) -> list[str]:
    """Model folders (a config.json beside weights) under `root`, relative to it: what requests
    may name. Hidden folders are never entered; a folder reached through a symlink out of the
    root is not listed (a request could not name it)."""
    base, found, frontier = location(root), [], [(location(root), 0)]
    while frontier and len(found) < limit:
        folder, level = frontier.pop(0)
        try:
            entries = sorted(folder.iterdir(), key=lambda e: e.name)
        except (OSError, FileNotFoundError):
            continue
        names = {e.name for e in entries}
        if "config.json" in names and any(n.endswith(".safetensors") or n.endswith(".bin") for n in names):
            relative = str(folder)[len(str(base)):].strip("/") or "."
            if requested_path(root, relative) is not None:
                found.append(relative)
            continue
        if level < depth:
            frontier += [(e, level + 1) for e in entries if not is_hidden(e.name) and e.is_dir()]
    return found


def model_folder(root: str, model: str) -> tuple[Any, str] | None:
    """The checkpoint folder a request's `model` names and its id (the path relative to the
    root), or None: outside the root, hidden, or not a model folder (no config.json)."""
    path = requested_path(root, model)
    if path is None or not is_file(path / "config.json"):
        return None
    if is_uri(root):
        return path, str(path)[len(str(location(root))):].strip("/")
    return path, path.relative_to(Path(root).resolve()).as_posix()


def safetensors_problem(path: Path) -> str | None:
    """Why a file is not whole safetensors (a header that does not parse, data shorter or longer
    than the header says), or None. Reads the header only."""
    try:
        with open(path, "rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            if not 2 <= size <= MAX_HEADER_BYTES:
                return f"{path.name} is not safetensors (header size {size})"
            header = json.loads(handle.read(size))
        ends = [t["data_offsets"][1] for name, t in header.items() if name != "__metadata__"]
        expected = 8 + size + max(ends, default=0)
        actual = path.stat().st_size
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError):
        return f"{path.name} is not safetensors (its header does not parse)"
    if actual != expected:
        return f"{path.name} holds {actual} bytes where its header describes {expected} (truncated or padded)"
    return None


def loadable_problem(folder: Path) -> str | None:
    """Why a local folder cannot be loaded as a model, from its files alone (a config that does
    not parse, no weights, pickled weights only, safetensors that are not whole), or None.
    Pickles are never loaded on demand: unpickling runs code."""
    try:
        config = json.loads((folder / "config.json").read_text())
        names = sorted(p.name for p in folder.iterdir())
    except (OSError, ValueError):
        return "its config.json does not parse"
    if not isinstance(config, dict) or not (config.get("model_type") or config.get("architectures")):
        return "its config.json names no model_type"
    weights = [n for n in names if n.endswith(".safetensors")]
    if not weights:
        pickled = [n for n in names if n.endswith(PICKLED_WEIGHTS)]
        return (f"its weights are pickles ({', '.join(pickled[:3])}), which are never loaded: convert them to "
                "safetensors" if pickled else "it holds no weights (*.safetensors)")
    return next(filter(None, (safetensors_problem(folder / n) for n in weights)), None)


def load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer  # heavy: loaded where tokenizers are needed

    return AutoTokenizer.from_pretrained(local_model(path, weights=False))  # a URI: its tokenizer files only


@lru_cache(maxsize=16)
def checkpoint_tokenizer(path: str) -> Any:
    return load_tokenizer(path)


OffLoop = Callable[..., Awaitable[Any]]


class Catalog:
    """The configured models (`models`: name → deployment handle; `descriptions`: what GET /models
    says of each; `tokenizers`: name → tokenizer) and, when `checkpoints` (the on-demand
    deployment's handle) is given, every model folder under `checkpoint_root`. File checks run
    through `off_loop`, never on the event loop."""

    def __init__(self, models: dict[str, Any], descriptions: list[dict[str, Any]], tokenizers: dict[str, Any],
                 checkpoint_root: str, checkpoints: Any | None, max_per_replica: int, off_loop: OffLoop,
                 failure_ttl_s: float = 60.0):
        self.models, self.tokenizers = models, tokenizers
        self.descriptions = {d["name"]: d for d in descriptions}
        self.checkpoint_root, self.checkpoints = checkpoint_root, checkpoints
        self.max_per_replica, self.off_loop = max_per_replica, off_loop
        # Folders found not loadable: model id -> (remembered until, the 404's detail), so retries
        # cost nothing and never reach (or evict) an engine.
        self.failure_ttl_s, self.unloadable = failure_ttl_s, {}

    async def resolve(self, model: str) -> Served:
        """A configured model by name, else a checkpoint folder under the root (served on demand);
        NotFound for anything else, and for any path that leaves the root."""
        if model in self.models:
            return Served(model, self.models[model], self.descriptions[model]["few_shot"], self.tokenizers.get(model))
        found = None if self.checkpoints is None else await self.off_loop(model_folder, self.checkpoint_root, model)
        if found is None:
            also = " or a checkpoint folder under the checkpoint root" if self.checkpoints is not None else ""
            raise NotFound(f"unknown model {excerpt(model, 200)!r}: give a served name{also}; served: "
                           f"{sorted(self.models)}")
        path, model_id = found
        remembered = self.unloadable.get(model_id)
        if remembered is not None and remembered[0] > time.monotonic():
            raise NotFound(remembered[1])
        try:
            problem = None if is_uri(self.checkpoint_root) else await self.off_loop(loadable_problem, path)
            tokenizer = None if problem else await self.off_loop(checkpoint_tokenizer, str(path))
        except Exception as err:  # noqa: BLE001 - a folder that is not a loadable model
            problem = describe(err)
        if problem:
            why = f"{excerpt(model, 200)!r} is not a loadable checkpoint: {excerpt(problem, 200)}"
            self.unloadable[model_id] = (time.monotonic() + self.failure_ttl_s, why)
            raise NotFound(why)
        return Served(model_id, self.checkpoints.options(multiplexed_model_id=model_id), 0, tokenizer)

    async def listing(self) -> ModelList:
        """GET /models: the configured models and, on demand, the checkpoints loaded and available."""
        on_demand = None
        if self.checkpoints is not None:
            available, loaded = await asyncio.gather(self.off_loop(checkpoint_folders, self.checkpoint_root),
                                                     self.checkpoints.loaded.remote())
            on_demand = OnDemand(max_per_replica=self.max_per_replica, loaded=loaded, available=available)
        return ModelList(models=list(self.descriptions.values()), on_demand=on_demand)

    async def names(self) -> list[str]:
        """GET /v1/models: the configured models, then the checkpoints loaded now."""
        names = list(self.models)
        if self.checkpoints is not None:
            names += [m for m in await self.checkpoints.loaded.remote() if m not in names]
        return names
