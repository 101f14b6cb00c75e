"""Where a run's files live: a local folder, or a URI of any file system pyarrow understands
(`s3://bucket/prefix`, `gs://bucket/prefix`, `hdfs://…`; `file:///abs/path` is a local folder).

On a multi-node cluster every node must see the run's folder: Ray Train writes its checkpoints
there from each worker, the curation pipeline writes its shards from whichever node scores a
batch, and a later stage (on another node) reads them back. A shared mount (EFS, NFS) is a local
path on every node; an object store is a URI. Both are handled here, behind the small part of
the `pathlib.Path` interface the stages use:

- `location(text)` gives a `Path` for a local folder (so local runs behave exactly as before)
  and a `Location` for a URI, with the same `/`, `name`, `parent`, `read_text`, `write_text`,
  `read_bytes`, `write_bytes`, `is_file`, `is_dir`, `exists`, `mkdir`, `glob` and `iterdir`;
- `filesystem(loc)` is the `(pyarrow FileSystem, path)` pair pyarrow, Ray Data and Ray Train
  take, and `uri(loc)` the string they take;
- `copy_tree`, `download` and `local_model` move folders between a location and a node's disk
  (vLLM and transformers load models from a local folder only).

Credentials are the file system's usual ones (an instance profile or `AWS_*` variables for S3,
application-default credentials for GCS); `AWS_ENDPOINT_URL` points S3 at any S3-compatible
server. Writes to an object store are whole objects, so a reader never sees half a file; on a
local disk `write_atomic` writes a temporary file and renames it.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Union
from urllib.parse import urlsplit, urlunsplit

import pyarrow.fs as pafs

LOCAL_SCHEMES = {"", "file", "local"}


def is_uri(text: str | os.PathLike | "Location") -> bool:
    """A URI of a non-local file system (`s3://…`, `gs://…`), not a local path or `file://`."""
    if isinstance(text, Location):
        return True
    text = str(text)
    scheme = urlsplit(text).scheme if "://" in text else ""
    return scheme.lower() not in LOCAL_SCHEMES


class Location:
    """A file or folder on a pyarrow file system, named by a URI (see the module doc). Paths are
    `/`-joined onto the URI's path; the query string (e.g. `?endpoint_override=…`) is kept."""

    def __init__(self, uri: str, _fs: pafs.FileSystem | None = None, _fs_path: str | None = None):
        parts = urlsplit(uri)
        self._parts = parts._replace(path=parts.path.rstrip("/") or "/", fragment="")
        if _fs is None:
            _fs, _fs_path = pafs.FileSystem.from_uri(uri)
        self.fs: pafs.FileSystem = _fs
        self.fs_path: str = _fs_path.rstrip("/")

    # -- naming ----------------------------------------------------------------------------
    @property
    def uri(self) -> str:
        return urlunsplit(self._parts)

    def __str__(self) -> str:
        return self.uri

    def __repr__(self) -> str:
        return f"Location({self.uri!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Location) and other.uri == self.uri

    def __hash__(self) -> int:
        return hash(self.uri)

    def __truediv__(self, name: str | os.PathLike) -> "Location":
        name = str(name).strip("/")
        parts = self._parts._replace(path=f"{self._parts.path.rstrip('/')}/{name}")
        return Location(urlunsplit(parts), self.fs, f"{self.fs_path}/{name}")

    def joinpath(self, *names: str) -> "Location":
        loc = self
        for name in names:
            loc = loc / name
        return loc

    @property
    def name(self) -> str:
        return self.fs_path.rsplit("/", 1)[-1]

    @property
    def stem(self) -> str:
        return self.name.rsplit(".", 1)[0] if "." in self.name.lstrip(".") else self.name

    @property
    def suffix(self) -> str:
        return "." + self.name.rsplit(".", 1)[1] if "." in self.name.lstrip(".") else ""

    @property
    def parent(self) -> "Location":
        path, fs_path = self._parts.path.rsplit("/", 1)[0] or "/", self.fs_path.rsplit("/", 1)[0]
        return Location(urlunsplit(self._parts._replace(path=path)), self.fs, fs_path)

    # -- queries ---------------------------------------------------------------------------
    def _info(self) -> pafs.FileInfo:
        return self.fs.get_file_info(self.fs_path)

    def exists(self) -> bool:
        return self._info().type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self._info().type == pafs.FileType.File

    def is_dir(self) -> bool:
        return self._info().type == pafs.FileType.Directory

    def iterdir(self) -> Iterator["Location"]:
        if not self.is_dir():
            return iter(())
        infos = self.fs.get_file_info(pafs.FileSelector(self.fs_path, allow_not_found=True))
        return iter(sorted((self / info.base_name for info in infos), key=lambda loc: loc.name))

    def glob(self, pattern: str) -> Iterator["Location"]:
        """Children whose name matches `pattern` (one level: `*.parquet`, `train-*`)."""
        if "/" in pattern:
            raise ValueError(f"Location.glob takes one level of pattern, not {pattern!r}")
        return iter([child for child in self.iterdir() if fnmatch.fnmatchcase(child.name, pattern)])

    # -- reading and writing -------------------------------------------------------------
    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.fs_path) as stream:
            return stream.read()

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def write_bytes(self, data: bytes) -> int:
        self.parent.mkdir(parents=True, exist_ok=True)
        with self.fs.open_output_stream(self.fs_path) as stream:  # one object, whole or absent
            stream.write(data)
        return len(data)

    def write_text(self, text: str, encoding: str = "utf-8") -> int:
        return self.write_bytes(text.encode(encoding))

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        if self.exists() and not exist_ok:
            raise FileExistsError(self.uri)
        self.fs.create_dir(self.fs_path, recursive=parents)

    def unlink(self, missing_ok: bool = False) -> None:
        if missing_ok and not self.exists():
            return
        self.fs.delete_file(self.fs_path)

    def rmtree(self) -> None:
        if self.is_dir():
            self.fs.delete_dir(self.fs_path)


PathLike = Union[Path, Location]


def location(path: str | os.PathLike | Location) -> PathLike:
    """A `Path` for a local folder or `file://` URI, a `Location` for any other URI."""
    if isinstance(path, (Path, Location)):
        return path
    text = str(path)
    if not is_uri(text):
        return Path(urlsplit(text).path) if text.startswith(("file://", "local://")) else Path(text)
    return Location(text)


def resolved(path: str | os.PathLike | Location) -> PathLike:
    """`location(path)`, made absolute when local (what a stage keeps and hands to Ray)."""
    loc = location(path)
    return loc.resolve() if isinstance(loc, Path) else loc


def uri(loc: PathLike | str) -> str:
    """The string Ray Data (`read_parquet`), Ray Train (`storage_path`) and pyarrow accept."""
    loc = location(loc)
    return str(loc.resolve()) if isinstance(loc, Path) else loc.uri


def filesystem(loc: PathLike | str) -> tuple[pafs.FileSystem, str]:
    """`(pyarrow file system, path on it)` of a location."""
    loc = location(loc)
    if isinstance(loc, Path):
        return pafs.LocalFileSystem(), str(loc.resolve())
    return loc.fs, loc.fs_path


def write_atomic(loc: PathLike, data: bytes) -> None:
    """Write a whole file so that readers see the old file, or none, or the new one: a temporary
    file and a rename on a local disk; one object PUT on an object store (atomic by itself)."""
    if isinstance(loc, Location):
        loc.write_bytes(data)
        return
    loc.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=loc.parent, prefix=f".{loc.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, loc)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def append_line(loc: PathLike, line: str) -> None:
    """Append one line (object stores have no append: the file is rewritten)."""
    if isinstance(loc, Path):
        with loc.open("a") as handle:
            handle.write(line.rstrip("\n") + "\n")
        return
    before = loc.read_text() if loc.is_file() else ""
    loc.write_text(before + line.rstrip("\n") + "\n")


def remove_tree(loc: PathLike) -> None:
    """Remove a file or a folder with everything in it (nothing if it does not exist)."""
    if isinstance(loc, Path):
        if loc.is_dir():
            shutil.rmtree(loc)
        elif loc.exists():
            loc.unlink()
    elif loc.is_file():
        loc.unlink()
    else:
        loc.rmtree()


def copy_tree(source: tuple[pafs.FileSystem, str] | PathLike, dest: PathLike) -> None:
    """Copy a folder (replacing `dest`): between any two file systems, e.g. a Ray Train
    checkpoint's folder (`(checkpoint.filesystem, checkpoint.path)`) to a run's `final/`."""
    src_fs, src_path = source if isinstance(source, tuple) else filesystem(source)
    remove_tree(dest)
    dst_fs, dst_path = filesystem(dest)
    dst_fs.create_dir(dst_path, recursive=True)
    pafs.copy_files(src_path, dst_path, source_filesystem=src_fs, destination_filesystem=dst_fs)


def download(source: PathLike | str, dest: Path, *, skip: tuple[str, ...] = ()) -> Path:
    """Copy a remote folder to a local one atomically (a temporary sibling, then a rename), so
    that concurrent downloads on one node leave one whole copy. Files matching a `skip`
    pattern are left out."""
    src_fs, src_path = filesystem(source)
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    try:
        infos = src_fs.get_file_info(pafs.FileSelector(src_path, recursive=True))
        for info in infos:
            if info.type != pafs.FileType.File:
                continue
            relative = info.path[len(src_path):].lstrip("/")
            if any(fnmatch.fnmatch(Path(relative).name, pattern) for pattern in skip):
                continue
            target = tmp / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            with src_fs.open_input_stream(info.path) as stream, target.open("wb") as handle:
                shutil.copyfileobj(stream, handle, length=16 << 20)
        try:
            os.replace(tmp, dest)
        except OSError:  # another process on this node finished first
            if not dest.is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


MODEL_CACHE_ENV = "ADVDISTILL_MODEL_CACHE"
WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.gguf")


def local_model(model: str, *, weights: bool = True) -> str:
    """A model that vLLM and transformers can load: a hub id or a local folder as it is; a
    folder on a URI (a run's `train-NAME/final` on S3) downloaded once per node into
    `$ADVDISTILL_MODEL_CACHE` (default `~/.cache/advdistill/models`). `weights=False` fetches the
    tokenizer and config files only."""
    if not is_uri(model):
        return model
    root = Path(os.environ.get(MODEL_CACHE_ENV) or Path.home() / ".cache" / "advdistill" / "models")
    fs, path = filesystem(model)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    if not infos:
        raise FileNotFoundError(f"no model files under {model}")
    # Keyed by the files' names, sizes and times too: a retrained `final/` is a new download.
    listing = sorted((i.path, i.size, i.mtime_ns) for i in infos if i.type == pafs.FileType.File)
    key = hashlib.sha256(repr((model, listing)).encode()).hexdigest()[:16]
    name = f"{Location(model).name}-{key}" + ("" if weights else "-tokenizer")
    return str(download(model, root / name, skip=() if weights else WEIGHT_FILES))
