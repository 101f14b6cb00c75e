"""The path rules of the evaluation API: what a request names (a checkpoint folder, a dataset file)
must resolve inside its root — no `..`, absolute paths, symlinks out, NUL bytes — and never
inside a hidden folder such as `.git`. A root is a local folder or a URI (`advdistill.storage`).
Plain Python: no Ray, no FastAPI."""

from __future__ import annotations

from pathlib import Path

from advdistill.storage import Location, is_uri, location


def inside(root: Path, candidate: str) -> Path | None:
    """`candidate` resolved under `root`, or None if it would leave it (.., absolute, symlinks)
    or cannot be a path at all (NUL bytes, names too long for the OS)."""
    try:
        root = root.resolve()
        path = (root / candidate).resolve()
    except (OSError, ValueError, RuntimeError):
        return None
    return path if path == root or root in path.parents else None


def inside_location(root: str, candidate: str) -> Location | None:
    """`candidate` (a relative path without `..`) under a URI root."""
    parts = candidate.split("/")
    if not candidate or candidate.startswith("/") or "://" in candidate or ".." in parts or "\0" in candidate:
        return None
    return location(root) / candidate


def under_root(root: str, candidate: str) -> Path | Location | None:
    """`candidate` inside `root`, a local folder or a URI; None if it would leave it."""
    return inside_location(root, candidate) if is_uri(root) else inside(Path(root), candidate)


def is_hidden(name: str) -> bool:
    """A path through a hidden folder or to a hidden file (`.git/config`, `runs/.cache/m`)."""
    return any(part.startswith(".") and part not in (".", "..") for part in Path(name).parts)


def requested_path(root: str, candidate: str) -> Path | Location | None:
    """What a request's path names: inside `root` and not hidden — as written and once resolved
    (a symlink `runs/m` → `.hidden/m` is hidden); None otherwise (the caller answers 404, never
    reads it)."""
    if is_hidden(candidate):
        return None
    if is_uri(root):  # an object store has no symlinks: the name is the path
        return under_root(root, candidate.strip("/"))
    path = under_root(root, candidate)
    if path is None or is_hidden(str(path.relative_to(Path(root).resolve()))):
        return None
    return path


def is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False
