"""What defines a stage's output, so that a rerun never mixes two runs (issue 30).

A fingerprint is a flat `{field: value}` of everything that changes what a stage computes:

- the config, **all of it** except two stated lists — `MAY_CHANGE_ON_RESUME` (where and how fast
  the work runs, how it is watched: never what it computes) and `OTHER_STAGES[stage]` (the
  sections only other stages read). A section added to the config is part of every fingerprint
  by default; nothing here lists what to include;
- what the config's paths name, in place of the path (`path_identity`): a file by its content, a
  model folder by its config.json and its files' contents (a retrained `final/` is a new model; a
  copied or moved one, or one unpacked again in a job's working directory, is the same); a hub id
  by its name;
- the stage's own inputs (`input.*`): the groups table training reads (shard names, rows, bytes),
  the model an evaluation runs, the few-shot count a stage prompts with.

Two fingerprints differ in the fields `differences` names. A field an older fingerprint lacks and
this one has at its default is no difference (the code grew a field whose default is the old
behaviour). `advdistill.rerun` compares them when a stage starts on a folder.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
from functools import lru_cache
from typing import Any, Callable, Mapping

from advdistill.config import DatasetConfig, ExperimentConfig
from advdistill.storage import is_uri, location

VERSION = 1

# Config fields a rerun may change and still continue the same output, with why. Dotted keys; a
# key names its whole subtree; `*` matches one section name. README "Resuming" lists them too.
MAY_CHANGE_ON_RESUME: dict[str, str] = {
    "name": "the experiment's label",
    "accelerator_hour_price": "the report's dollar figures",
    "serve": "serving after the run",
    "tracking": "where the run is logged (MLflow)",
    "*.resources": "the GPUs, CPUs, actors and custom resources a stage's workers hold",
    "train.num_workers": "an optimizer step is the same groups whatever the number of workers",
    "train.max_failures": "restarts after a lost worker",
    "train.checkpoint_every": "how often a checkpoint is kept (a resumed run replays the same steps)",
    "train.checkpoints_to_keep": "disk use",
    "train.report_every": "how often Ray Train hears of a step (every step reaches metrics.jsonl)",
    "train.val_every": "how often validation loss is measured, not what is trained",
    "train.activation_checkpointing": "memory for compute: the same gradients",
    "train.loss.chunk_size": "memory for compute: the same log-probs",
    "curate.progress_every_s": "progress lines",
    "*.engine.batch_size": "prompts handed to an engine at once (per-prompt seeds make samples batch-independent)",
    "*.engine.concurrent_batches": "batches an engine runs at once",
    "*.engine.gpu_memory_utilization": "KV cache size",
    "*.engine.enable_prefix_caching": "KV cache reuse",
    "*.engine.stall_timeout_s": "when a hung engine is restarted",
    "*.engine.tensor_parallel_size": "GPUs per engine",
    "*.engine.endpoint.base_url": "where the teacher's server answers (endpoint.model names the model)",
    "*.engine.endpoint.api_key_env": "the key's variable",
    "*.engine.endpoint.max_concurrency": "requests in flight",
    "*.engine.endpoint.requests_per_second": "request rate",
    "*.engine.endpoint.timeout_s": "request timeout",
    "*.engine.endpoint.max_retries": "retries",
}

# The config a stage does not read: sections of the other stages. `prompt.few_shot` is replaced
# by `input.few_shot`, the count the stage actually prompts with (a flag may override it).
OTHER_STAGES: dict[str, tuple[str, ...]] = {
    "curate": ("student", "extra_sft_students", "sft_baseline", "train", "eval", "prompt.few_shot"),
    "train": ("teacher", "extra_sft_students", "sft_baseline", "curate", "reward", "eval", "prompt.few_shot"),
    # an evaluation's dataset is its input, not the config's list of splits
    "evaluate": ("teacher", "student", "extra_sft_students", "sft_baseline", "curate", "reward", "advantage",
                 "train", "eval.test", "eval.ood", "prompt.few_shot"),
    "run": (),  # a distill.py run folder: every stage of it
}

FILE_HASH_LIMIT = 64 * 2**20  # a file up to this size is hashed whole
WINDOWS, WINDOW = 16, 2**20  # a larger one: its size and 16 windows of 1 MiB spread over it


def matches(key: str, pattern: str) -> bool:
    """`pattern` names `key` or a section above it (`*` = one section name)."""
    parts, wanted = key.split("."), pattern.split(".")
    return len(wanted) <= len(parts) and all(fnmatch.fnmatchcase(p, w) for p, w in zip(parts, wanted))


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys; lists stay whole values."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def config_fields(cfg: ExperimentConfig, stage: str) -> dict[str, Any]:
    """The config fields that define `stage`'s output: all but the may-change and other-stage ones."""
    skip = [*MAY_CHANGE_ON_RESUME, *OTHER_STAGES[stage]]
    return {k: v for k, v in flatten(cfg.model_dump(mode="json")).items() if not any(matches(k, p) for p in skip)}


@lru_cache(maxsize=1)
def default_fields() -> dict[str, Any]:
    return flatten(ExperimentConfig().model_dump(mode="json"))


def _sha(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()[:16]


def _looks_like_path(text: str) -> bool:
    return 0 < len(text) < 4096 and "\n" not in text and ("/" in text or bool(os.path.splitext(text)[1]))


def path_identity(text: str) -> dict[str, Any] | None:
    """What a path the config names holds: a file's size and content hash; a model folder's
    config.json hash and a hash of its files' names and contents. None for what is not a file or
    a model folder (a hub id, a plain word); an http(s) URL is never fetched."""
    if not _looks_like_path(text) or text.startswith(("http://", "https://")):
        return None
    try:
        loc = location(text)
        if loc.is_file():
            return {"bytes": _size(loc), "sha256": content_hash(loc)}
        if loc.is_dir() and (loc / "config.json").is_file():
            return model_identity(loc)
    except (OSError, ValueError):  # not a path after all (a name too long, an unknown URI scheme)
        return None
    return None


def _size(loc) -> int:
    return loc.stat().st_size if not is_uri(loc) else loc.fs.get_file_info(loc.fs_path).size


def content_hash(loc) -> str:
    """A file's content hash: whole up to `FILE_HASH_LIMIT`; beyond, its size and `WINDOWS`
    windows spread evenly over it (a 15 GB model reads 16 MiB per file, and training changes
    every tensor the windows fall in)."""
    size = _size(loc)
    if size <= FILE_HASH_LIMIT:
        return _sha(loc.read_bytes())
    digest = hashlib.sha256(str(size).encode())
    with open(loc, "rb") if not is_uri(loc) else loc.fs.open_input_file(loc.fs_path) as handle:
        for i in range(WINDOWS):
            handle.seek((size - WINDOW) * i // (WINDOWS - 1))
            digest.update(handle.read(WINDOW))
    return "windows:" + digest.hexdigest()[:16]


def model_identity(folder) -> dict[str, Any]:
    """A model folder: its config.json's hash, and a hash of its top-level files' names and
    contents (`content_hash`)."""
    files = sorted(folder.iterdir(), key=lambda p: p.name)
    listing = [(p.name, content_hash(p)) for p in files if p.is_file()]
    return {"config": _sha((folder / "config.json").read_bytes()), "files": _sha(json.dumps(listing))}


def with_identities(value: Any, identify: Callable[[str], dict | None] = path_identity) -> Any:
    """`value` with every path in it (list items and nested sections too) replaced by what it
    holds; what is not a path stays."""
    if isinstance(value, str):
        found = identify(value)
        return value if found is None else found
    if isinstance(value, list):
        return [with_identities(v, identify) for v in value]
    if isinstance(value, Mapping):
        return {k: with_identities(v, identify) for k, v in value.items()}
    return value


class Fingerprint:
    def __init__(self, stage: str, fields: Mapping[str, Any]):
        self.stage = stage
        self.fields = dict(sorted(fields.items()))

    @property
    def digest(self) -> str:
        return _sha(json.dumps(self.fields, sort_keys=True, default=str))

    def to_json(self) -> str:
        return json.dumps({"version": VERSION, "stage": self.stage, "digest": self.digest, "fields": self.fields},
                          indent=1, default=str)

    @classmethod
    def from_json(cls, text: str) -> "Fingerprint":
        data = json.loads(text)
        if not isinstance(data, dict) or not isinstance(data.get("fields"), dict):
            raise ValueError("not a fingerprint (no 'fields')")
        return cls(str(data.get("stage", "")), data["fields"])

    def differences(self, earlier: "Fingerprint") -> list[str]:
        """`field: earlier → now` for every field that differs (absent: `(none)`), skipping fields
        `earlier` lacks that hold their default now."""
        defaults, now, before = default_fields(), self.fields, earlier.fields
        out = []
        for key in sorted(set(now) | set(before)):
            if key not in before and key in defaults and now[key] == defaults[key]:
                continue
            old, new = before.get(key, "(none)"), now.get(key, "(none)")
            if json.dumps(old, sort_keys=True, default=str) != json.dumps(new, sort_keys=True, default=str):
                out.append(f"{key}: {_short(old)} → {_short(new)}")
        if self.stage != earlier.stage:
            out.insert(0, f"stage: {earlier.stage} → {self.stage}")
        return out


def _short(value: Any, limit: int = 60) -> str:
    text = value if isinstance(value, str) and value == "(none)" else json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def stage_fingerprint(stage: str, cfg: ExperimentConfig, inputs: Mapping[str, Any] | None = None,
                      identify: Callable[[str], dict | None] = path_identity) -> Fingerprint:
    """The fingerprint of `stage` under `cfg`, with its own `inputs` (`input.NAME`), every path
    among them replaced by what it holds (`student.files`, `input.model.config`, ...)."""
    fields = {**config_fields(cfg, stage), **flatten({"input": dict(inputs or {})})}
    return Fingerprint(stage, flatten(with_identities(fields, identify)))


def curate_fingerprint(cfg: ExperimentConfig, few_shot: int, **kw: Any) -> Fingerprint:
    return stage_fingerprint("curate", cfg, {"few_shot": few_shot}, **kw)


def train_fingerprint(cfg: ExperimentConfig, student: str, groups: Mapping[str, Any], **kw: Any) -> Fingerprint:
    """`student`: the model trained (a flag may replace the config's); `groups`: the table's
    identity (`curate.store.GroupsTable.identity`)."""
    cfg = cfg.model_copy(update={"student": student})
    return stage_fingerprint("train", cfg, {"groups": dict(groups)}, **kw)


def eval_fingerprint(cfg: ExperimentConfig, model: str, dataset: DatasetConfig, few_shot: int,
                     **kw: Any) -> Fingerprint:
    return stage_fingerprint("evaluate", cfg, {"model": model, "dataset": dataset.model_dump(mode="json"),
                                               "few_shot": few_shot}, **kw)


def run_fingerprint(cfg: ExperimentConfig, **kw: Any) -> Fingerprint:
    """A distill.py run folder as a whole: the config (less the may-change list) and its paths."""
    return stage_fingerprint("run", cfg, **kw)
