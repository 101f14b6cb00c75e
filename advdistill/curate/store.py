"""Where curation keeps its outputs (SPEC §9b), and when it is done.

    OUTPUT/groups/*.parquet    kept groups (`schema.CuratedGroup`): the groups table training reads
    OUTPUT/dropped/*.parquet   groups with no correct response, same schema
    OUTPUT/quarantine.jsonl    input rows that could not become records, and why
    OUTPUT/summary.json        counts, accuracy, tokens, wall time, accelerator-hours (an endpoint teacher:
                               requests and billed tokens, summed over the groups), histograms
    OUTPUT/runs.jsonl          one line per run into this folder (what it generated, how long)
    OUTPUT/config.yaml         the resolved config
    OUTPUT/fingerprint.json    what defines this output: a rerun with other settings is refused (`advdistill.rerun`)

OUTPUT is a local folder or a URI (`s3://bucket/run/curate`, `advdistill.storage`): the shards are
written by the Ray Data pipeline itself, on whichever node scores a batch (`write_scored_batch`,
a map stage after scoring), never by the driver, which only sees each row's id, verdict and
token count. Shards are keyed and atomic: each batch is one Parquet file named by a hash of its
ids, written whole (a temporary file and a rename on a disk, one object PUT on an object store),
so a crash leaves only whole files and rewriting a batch — a retried task, a rerun — is an
overwrite, never a duplicate. A rerun reads the ids already written and generates only the rest.
Every shard has the one `CuratedGroup` schema, so the folders read as one dataset.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from advdistill.config import ExperimentConfig
from advdistill.fingerprint import curate_fingerprint
from advdistill.rerun import claim
from advdistill.schema import CuratedGroup, arrow_schema
from advdistill.storage import PathLike, append_line, filesystem, location, resolved, write_atomic


def shard_name(ids: list[str]) -> str:
    """A shard's file name: a hash of its (sorted) ids, the same whoever writes it and when."""
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:24] + ".parquet"


def write_shard(folder: str | PathLike, table: pa.Table) -> PathLike | None:
    """Write a table of curated groups as one Parquet file named by its ids (rewriting the same
    batch is a no-op overwrite, never a duplicate), whole (`storage.write_atomic`)."""
    if table.num_rows == 0:
        return None
    folder = location(folder)
    path = folder / shard_name(table.column("id").to_pylist())
    sink = pa.BufferOutputStream()
    # Page checksums: a corrupted page is an error when read with verification (training does),
    # not silently wrong text.
    pq.write_table(table.select(arrow_schema(CuratedGroup).names).cast(arrow_schema(CuratedGroup)), sink,
                   write_page_checksum=True)
    write_atomic(path, sink.getvalue().to_pybytes())
    return path


def shard_files(folder: str | PathLike) -> list[PathLike]:
    folder = location(folder)
    return sorted(folder.glob("*.parquet"), key=lambda p: p.name) if folder.is_dir() else []


class BadShard(ValueError):
    """A groups file that is not a readable Parquet file (truncated, corrupted); names it."""


class DuplicateGroups(ValueError):
    """The same group id in two shards of one folder (two curation runs wrote into it); names both."""


@dataclass(frozen=True)
class GroupsTable:
    """A folder of shards, opened: every footer read, every id seen once."""

    folder: PathLike
    files: list[PathLike]
    rows: list[int]
    sizes: list[int]

    @property
    def identity(self) -> dict[str, Any]:
        """What a run that trains on it is fingerprinted by (`advdistill.fingerprint`): the shards'
        names, rows and bytes (a shard's name is a hash of its ids)."""
        listing = [[f.name, n, b] for f, n, b in zip(self.files, self.rows, self.sizes)]
        return {"shards": len(self.files), "rows": sum(self.rows),
                "listing": hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:16]}


def _unreadable(path: PathLike, err: Exception) -> BadShard:
    return BadShard(f"groups file {path} is not a readable Parquet file ({type(err).__name__}: {str(err)[:200]}); "
                    "remove or regenerate it (a rerun of curation rewrites missing shards)")


def open_groups(folder: str | PathLike, *, pages: bool = False) -> GroupsTable:
    """Every shard's footer and ids, read before any worker starts: a shard without a readable
    footer is `BadShard` naming it; an id in two shards is `DuplicateGroups` naming both (a stated
    choice over de-duplicating: the two copies may come from different teachers or settings).
    `pages`: every page read too, checksums verified (`verify_pages`)."""
    files, rows, sizes, seen = shard_files(folder), [], [], {}
    duplicates: list[tuple[str, str, str]] = []
    for path in files:
        try:
            fs, fs_path = filesystem(path)
            with fs.open_input_file(fs_path) as handle:
                shard = pq.ParquetFile(handle)
                rows.append(shard.metadata.num_rows)
                sizes.append(handle.size())
                ids = shard.read(columns=["id"]).column("id").to_pylist()
        except Exception as err:  # noqa: BLE001 - ArrowInvalid, OSError, a missing column: all mean the same here
            raise _unreadable(path, err) from None
        for group_id in ids:
            if group_id in seen:
                duplicates.append((group_id, seen[group_id], path.name))
            else:
                seen[group_id] = path.name
    if duplicates:
        group_id, first, second = duplicates[0]
        raise DuplicateGroups(
            f"group id {group_id!r} is in two shards of {location(folder)}: {first} and {second} ({len(duplicates)} "
            "ids are in more than one shard: two curation runs wrote into this folder?); keep one run's shards "
            "(move the others out) or curate again into a new folder")
    if pages:
        verify_pages(files)
    return GroupsTable(location(folder), files, rows, sizes)


def verify_pages(files: list[PathLike]) -> None:
    """Read every page of every shard, streamed, with the page checksums verified (shards carry
    them since `write_shard` writes them; older ones are only decoded): `BadShard` naming the
    first that does not read back. A corrupt page a footer cannot reveal is found here, before
    training, rather than inside Ray Data (whose error names no file and, in Ray 2.60's reader,
    skips the checksums) or not at all (a flipped bit that still decodes)."""
    for path in files:
        try:
            fs, fs_path = filesystem(path)
            with fs.open_input_file(fs_path) as handle:
                for _ in pq.ParquetFile(handle, page_checksum_verification=True).iter_batches(batch_size=256):
                    pass
        except Exception as err:  # noqa: BLE001 - see open_groups
            raise _unreadable(path, err) from None


def read_shards(folder: str | PathLike, columns: list[str] | None = None) -> pa.Table | None:
    """The groups of a folder of shards as one table (None if there are none)."""
    files = shard_files(folder)
    if not files:
        return None
    fs, _ = filesystem(files[0])
    # The schema is given, not inferred: shards written before it existed (with null-typed
    # columns) read as the same table.
    return pq.read_table([filesystem(f)[1] for f in files], filesystem=fs, schema=arrow_schema(CuratedGroup),
                         columns=columns)


def write_scored_batch(batch: pa.Table, folder: str) -> pa.Table:
    """The curation pipeline's last map stage (runs on any node): write a scored batch's kept
    and dropped shards into the curation folder `folder` (a path or URI every node sees), and
    pass on only what the driver counts — id, keep, tokens generated."""
    CurateOutput(folder).write_groups(batch)
    tokens = [sum(lengths) for lengths in batch.column("token_lengths").to_pylist()]
    return pa.table({"id": batch.column("id"), "keep": batch.column("keep"), "tokens": pa.array(tokens, pa.int64())})


class CurateOutput:
    """A curation folder (see the module doc)."""

    def __init__(self, folder: str | PathLike):
        self.folder = location(folder)
        self.groups = self.folder / "groups"
        self.dropped = self.folder / "dropped"
        self.quarantine = self.folder / "quarantine.jsonl"
        self.summary = self.folder / "summary.json"
        self.runs = self.folder / "runs.jsonl"
        self.config = self.folder / "config.yaml"

    def owned(self) -> list[PathLike]:
        """What a curation run writes here (what `--restart` removes, `advdistill.rerun`)."""
        card = self.folder / "README.md"  # the dataset card curate.py and distill.py write (advdistill.cards)
        return [self.groups, self.dropped, self.quarantine, self.summary, self.runs, self.config, card]

    def read_summary(self) -> dict[str, Any]:
        return json.loads(self.summary.read_text()) if self.summary.is_file() else {}

    def is_complete(self) -> bool:
        """Every prompt read was written (kept or dropped), as the last run's summary says."""
        summary = self.read_summary()
        return bool(summary) and summary["prompts_written"] == summary["prompts_read"]

    def write_groups(self, table: pa.Table) -> None:
        """A batch of curated groups: the kept ones into groups/, the others into dropped/."""
        keep = table.column("keep")
        write_shard(self.groups, table.filter(keep))
        write_shard(self.dropped, table.filter(pc.invert(keep)))

    def read(self, columns: list[str] | None = None) -> list[pa.Table]:
        """The kept and the dropped groups written so far (those that exist)."""
        return [t for t in (read_shards(self.groups, columns), read_shards(self.dropped, columns)) if t is not None]

    def done_ids(self) -> set[str]:
        return {i for table in self.read(["id"]) for i in table.column("id").to_pylist()}

    def write_quarantine(self, quarantined: list[dict[str, Any]]) -> None:
        # Rewritten each run from the input: the same input gives the same file, never duplicates.
        self.quarantine.write_text("".join(json.dumps(row) + "\n" for row in quarantined))

    def log_run(self, run: dict[str, Any]) -> None:
        append_line(self.runs, json.dumps(run))

    def read_runs(self) -> list[dict[str, Any]]:
        if not self.runs.is_file():
            return []
        return [json.loads(line) for line in self.runs.read_text().splitlines() if line.strip()]


def claim_curation(cfg: ExperimentConfig, output: str | PathLike, few_shot: int | None = None, *,
                   restart: bool = False) -> CurateOutput:
    """Make `output` this curation's before anything is generated (`advdistill.rerun`): the same
    teacher, dataset, sampling, scoring and prompts continue it; others are refused, naming the
    fields, unless `restart`."""
    out = CurateOutput(resolved(output))
    few_shot = cfg.prompt.few_shot if few_shot is None else few_shot
    claim(out.folder, curate_fingerprint(cfg, few_shot), out.owned, restart=restart)
    return out
