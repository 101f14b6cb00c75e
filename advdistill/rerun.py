"""A stage starting on an output folder (issue 30): continue it, refuse it, or start it over.

`claim(folder, fingerprint, owned, restart=...)` runs before a stage writes anything (and, from
the entry points, before Ray starts):

- no `fingerprint.json` and none of the stage's files: a fresh folder; the fingerprint is written;
- the same fingerprint: the stage continues what the folder holds (resume);
- another fingerprint: `RerunMismatch`, naming each differing field, unless `restart`;
- `restart`: the stage's own files in the folder (`owned`, each stage's output class lists them)
  are removed, then the fingerprint is written. Nothing else in the folder is touched: a file
  the stage does not write stays, and so does the folder.
- the stage's files without a fingerprint (a folder written before fingerprints existed): taken
  over with a warning (a stated choice: refusing would strand every earlier run).
- a folder another stage fingerprinted (`train.py --output` on a curation folder) is refused,
  `restart` or not: its files are not this stage's to remove.

The file is written through the storage layer (`write_atomic`), so an `s3://` output works.
"""

from __future__ import annotations

from typing import Callable, Iterable

from advdistill.fingerprint import Fingerprint
from advdistill.storage import PathLike, location, remove_tree, write_atomic

FINGERPRINT_FILE = "fingerprint.json"
MAX_LISTED = 8
RESTART_HELP = ("start the output over: remove what an earlier run of this stage wrote there (its own files, nothing "
                "else), even one with other settings; without it a rerun with other settings is refused")


class RerunMismatch(ValueError):
    """An output folder written by another run; the message names the fields that differ."""


def fingerprint_path(folder: PathLike) -> PathLike:
    return location(folder) / FINGERPRINT_FILE


def read_fingerprint(folder: PathLike) -> Fingerprint | None:
    path = fingerprint_path(folder)
    if not path.is_file():
        return None
    try:
        return Fingerprint.from_json(path.read_text())
    except ValueError as err:  # not JSON, or not a fingerprint: a one-line error, never a guess
        raise RerunMismatch(f"{path} is unreadable ({err}): rerun with --restart to start {location(folder)} over, "
                            "or give a new --output") from None


def mismatch_message(folder: PathLike, differences: list[str]) -> str:
    shown = "; ".join(differences[:MAX_LISTED])
    more = f"; and {len(differences) - MAX_LISTED} more (all in {fingerprint_path(folder)})" \
        if len(differences) > MAX_LISTED else ""
    return (f"{folder} holds the output of a run with other settings ({shown}{more}): rerun with --restart to start "
            "it over (removes that output, nothing else), or give a new --output")


def claim(folder: PathLike, fingerprint: Fingerprint, owned: Callable[[], Iterable[PathLike]], *,
          restart: bool = False, log: Callable[[str], None] = print) -> str:
    """Make `folder` this run's (see the module doc). Returns what happened: fresh, resumed,
    restarted or adopted. Raises `RerunMismatch` for a folder of another run."""
    folder = location(folder)
    existing = [p for p in owned() if p.exists()]
    try:
        earlier = read_fingerprint(folder)
    except RerunMismatch:
        if not restart:
            raise
        earlier = None  # unreadable, and a restart replaces it
    if earlier is not None and earlier.stage != fingerprint.stage:
        # Never restart another stage's folder: its files are not this stage's to remove.
        raise RerunMismatch(f"{folder} holds a {earlier.stage} output, not a {fingerprint.stage} one: give this "
                            f"{fingerprint.stage} its own --output")
    if restart:
        for path in [*existing, fingerprint_path(folder)]:
            remove_tree(path)
        if existing:
            log(f"[restart] {folder}: removed {', '.join(sorted(p.name for p in existing))}")
        _write(folder, fingerprint)
        return "restarted"
    if earlier is None:
        _write(folder, fingerprint)
        if existing:
            log(f"[rerun] {folder} has output but no {FINGERPRINT_FILE} (written before fingerprints): taking it as "
                "this run's; if it came from other settings, rerun with --restart")
            return "adopted"
        return "fresh"
    differences = fingerprint.differences(earlier)
    if differences:
        raise RerunMismatch(mismatch_message(folder, differences))
    if earlier.to_json() != fingerprint.to_json():
        _write(folder, fingerprint)  # fields at their defaults that the earlier file lacked
    return "resumed"


def _write(folder: PathLike, fingerprint: Fingerprint) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(fingerprint_path(folder), fingerprint.to_json().encode())
