"""Resuming when Ray Train's own record of its checkpoints is broken (issue 30).

Ray Train (2.60) keeps `OUTPUT/checkpoints/checkpoint_manager_snapshot.json`, the list of the
checkpoints it reported, and writes it in place (no temporary file and rename: FIELD-NOTES). A
driver killed during that write leaves it torn, and the next `fit()` stops with
`CheckpointManagerInitializationError` although whole checkpoint folders sit beside it. Before
training starts, the driver reads the snapshot; if it is unreadable or names a checkpoint folder
that is gone, it is moved aside (`…json.broken-N`, nothing deleted) and training resumes from the
newest **complete** checkpoint folder: its `trainer_state.json` reads, its metrics are there, and
every file its torch.distributed.checkpoint metadata lists is there at least as long as the
metadata says. The loop receives that folder (`recovered_checkpoint`) and restores it exactly as
it restores Ray Train's own.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from typing import Any, Callable

from advdistill.storage import PathLike, filesystem
from advdistill.train.checkpointing import METRICS_FILE, SHARDED, TRAINER_STATE

SNAPSHOT = "checkpoint_manager_snapshot.json"
METADATA = ".metadata"  # torch.distributed.checkpoint's index of the shards


@dataclass(frozen=True)
class Recovered:
    folder: PathLike  # the checkpoint folder to resume from
    step: int
    reason: str  # what was wrong with the snapshot

    def for_workers(self) -> tuple[Any, str]:
        """(pyarrow file system, path): what `ray.train.Checkpoint(path, filesystem=...)` takes."""
        return filesystem(self.folder)


def snapshot_problem(checkpoints: PathLike, newest: tuple[PathLike, int] | None) -> str | None:
    """Why Ray Train would not resume from the newest complete checkpoint folder (`newest`) with
    its snapshot in `checkpoints`, or None: the snapshot is unreadable, names folders that are
    gone, or resumes from an older checkpoint (or none: it is missing) while a newer one is whole."""
    path = checkpoints / SNAPSHOT
    if not path.is_file():
        return f"{SNAPSHOT} is missing beside complete checkpoint folders" if newest else None
    try:
        state = json.loads(path.read_bytes().decode("utf-8"))
        named = [r["checkpoint_dir_name"] for r in state["checkpoint_results"]]
        latest = (state.get("latest_checkpoint_result") or {}).get("checkpoint_dir_name")
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        return f"{SNAPSHOT} is unreadable ({type(err).__name__}: {str(err)[:120]})"
    missing = [name for name in named if not (checkpoints / name).is_dir()]
    if missing:
        return f"{SNAPSHOT} names checkpoint folders that are gone: {', '.join(missing)}"
    if newest is not None:
        step = checkpoint_step(checkpoints / latest) if latest else None
        if step is None or step < newest[1]:
            return f"{SNAPSHOT} resumes from {latest or 'no checkpoint'} (step {step}), not the newest complete one"
    return None


def checkpoint_step(folder: PathLike, unpickle: Callable[[bytes], Any] = pickle.loads) -> int | None:
    """The global step of a complete checkpoint folder, None if any part of it is missing or cut."""
    try:
        step = int(json.loads((folder / TRAINER_STATE).read_text())["global_step"])
        if not (folder / METRICS_FILE).is_file():
            return None
        # Written by this project's own training (dcp.save); torch reads it the same way to restore.
        metadata = unpickle((folder / SHARDED / METADATA).read_bytes())
        sizes = {p.name: _size(p) for p in (folder / SHARDED).iterdir()}
        for info in metadata.storage_data.values():
            if sizes.get(info.relative_path, -1) < info.offset + info.length:
                return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, EOFError, pickle.UnpicklingError):
        return None
    return step


def _size(path: PathLike) -> int:
    fs, fs_path = filesystem(path)
    return fs.get_file_info(fs_path).size


def newest_complete_checkpoint(checkpoints: PathLike) -> tuple[PathLike, int] | None:
    found = [(step, folder.name, folder) for folder in checkpoints.glob("checkpoint_*") if folder.is_dir()
             for step in [checkpoint_step(folder)] if step is not None]
    if not found:
        return None
    step, _, folder = max(found, key=lambda item: (item[0], item[1]))
    return folder, step


def recover(checkpoints: PathLike, log: Callable[[str], None] = print) -> Recovered | None:
    """If Ray Train's snapshot in `checkpoints` would not resume from the newest complete
    checkpoint folder: move the snapshot aside and return that folder (None: nothing to recover)."""
    newest = newest_complete_checkpoint(checkpoints) if checkpoints.is_dir() else None
    problem = snapshot_problem(checkpoints, newest)
    if problem is None:
        return None
    snapshot = checkpoints / SNAPSHOT
    kept = ""
    if snapshot.is_file():
        n = 1
        while (checkpoints / f"{SNAPSHOT}.broken-{n}").exists():
            n += 1
        aside = checkpoints / f"{SNAPSHOT}.broken-{n}"
        aside.write_bytes(snapshot.read_bytes())
        snapshot.unlink()
        kept = f"; the snapshot is kept as {aside.name}"
    if newest is None:
        log(f"[train] {problem}; no complete checkpoint folder in {checkpoints}: training starts over{kept}")
        return None
    folder, step = newest
    log(f"[train] {problem}: resuming from the newest complete checkpoint folder, {folder.name} (step {step}){kept}")
    return Recovered(folder, step, problem)
