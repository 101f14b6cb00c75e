"""Where curation keeps its outputs (SPEC §9b), and when it is done.

    OUTPUT/groups/*.parquet    kept groups (`schema.CuratedGroup`): the groups table training reads
    OUTPUT/dropped/*.parquet   groups with no correct response, same schema
    OUTPUT/quarantine.jsonl    input rows that could not become records, and why
    OUTPUT/summary.json        counts, accuracy, tokens, wall time, accelerator-hours, histograms
    OUTPUT/runs.jsonl          one line per run into this folder (what it generated, how long)
    OUTPUT/config.yaml         the resolved config

Shards are keyed and atomic: each batch is one Parquet file named by a hash of its ids, written
to a temporary file and renamed, so a crash leaves only whole files and rewriting a batch is an
overwrite, never a duplicate. A rerun reads the ids already written and generates only the rest.
Every shard has the one `CuratedGroup` schema, so the folders read as one dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from advdistill.schema import CuratedGroup, arrow_schema


def write_shard(folder: Path, table: pa.Table) -> Path | None:
    """Write a table of curated groups as one Parquet file named by its ids (rewriting the same
    batch is a no-op overwrite, never a duplicate), via a temp file and an atomic rename."""
    if table.num_rows == 0:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    ids = sorted(table.column("id").to_pylist())
    path = folder / (hashlib.sha256("\n".join(ids).encode()).hexdigest()[:24] + ".parquet")
    tmp = folder / f".{path.name}.{os.getpid()}.tmp"
    pq.write_table(table.select(arrow_schema(CuratedGroup).names).cast(arrow_schema(CuratedGroup)), tmp)
    os.replace(tmp, path)
    return path


def read_shards(folder: Path, columns: list[str] | None = None) -> pa.Table | None:
    """The groups of a folder of shards as one table (None if there are none)."""
    files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    if not files:
        return None
    # The schema is given, not inferred: shards written before it existed (with null-typed
    # columns) read as the same table.
    return pq.read_table([str(f) for f in files], schema=arrow_schema(CuratedGroup), columns=columns)


class CurateOutput:
    """A curation folder (see the module doc)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.groups = self.folder / "groups"
        self.dropped = self.folder / "dropped"
        self.quarantine = self.folder / "quarantine.jsonl"
        self.summary = self.folder / "summary.json"
        self.runs = self.folder / "runs.jsonl"
        self.config = self.folder / "config.yaml"

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
        with self.runs.open("a") as handle:
            handle.write(json.dumps(run) + "\n")

    def read_runs(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.runs.read_text().splitlines() if line.strip()]
