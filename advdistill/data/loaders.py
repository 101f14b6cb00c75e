"""Dataset loading, SPEC §8: every task's rows become the same record (`advdistill.schema.Record`).

    {"id", "task", "question", "reference", "choices", "meta"}

What differs between tasks — the hub id, the splits, how a row becomes a record — is the task's
registry entry (`advdistill.tasks`). Rows come from a local JSON-lines/Parquet file with the
source's fields (clusters without hub access, tests), else from the task's generator (the
synthetic task), else from the task's own file (a declared task: `TaskSpec.source_file`, whose
`split_column` picks the split's rows where one file holds several), else from its hub id with
`datasets.load_dataset`. Rows that cannot become a
record (missing or empty fields, an unparsable reference, a duplicate id, a line that is not
JSON or not UTF-8) never stop a run: they are returned as quarantined, each with its reason, the
source it came from and its 1-based `line` (the line of a JSONL file, the row of a Parquet file
or of a hub/generated split). A file that cannot be read at all (missing, not Parquet) raises
`DatasetError` naming it.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from advdistill.config import DatasetConfig
from advdistill.schema import Record, columns
from advdistill.scoring.numbers import parse_number
from advdistill.tasks import MAX_OPTIONS, OPTION_LETTERS, BadRow, TaskSpec, get_task

RECORD_COLUMNS = columns(Record)


class DatasetError(ValueError):
    """A dataset source that cannot be read at all (not a row: the whole file); names the file."""


# The suffixes a local dataset file may have.
DATASET_SUFFIXES = (".jsonl", ".json", ".parquet")


@dataclass
class LoadResult:
    records: list[Record]
    quarantined: list[dict[str, Any]] = field(default_factory=list)


def checked_record(record: dict[str, Any], spec: TaskSpec) -> Record:
    """A converter's record, checked against what its task promises; BadRow otherwise."""
    if tuple(record) != RECORD_COLUMNS:
        raise ValueError(f"task {spec.name}: a record has the fields {RECORD_COLUMNS}, got {tuple(record)}")
    reference, choices = record["reference"], record["choices"]
    if reference is None:
        if not spec.reference_optional:
            raise BadRow("missing reference")
    elif spec.answer == "number" and parse_number(reference) is None:
        raise BadRow(f"unparsable reference: {reference!r} is not a number")
    if spec.multiple_choice:
        if not isinstance(choices, list) or not 1 <= len(choices) <= MAX_OPTIONS:
            raise BadRow(f"choices must be a list of 1 to {MAX_OPTIONS} options")
        letters = OPTION_LETTERS[: len(choices)]
        if reference is not None and (len(reference) != 1 or reference not in letters):
            raise BadRow(f"unparsable reference: answer {reference!r} is not one of the {len(choices)} option letters")
    return record  # type: ignore[return-value]


def _read_local(path: Path, quarantined: list[dict[str, Any]]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(1-based line, row) of a local JSONL/Parquet file; undecodable, non-JSON and non-object
    lines are quarantined with their line number."""
    if not path.is_file():
        raise FileNotFoundError(f"dataset file not found: {path}")
    if path.suffix == ".parquet":
        import pyarrow as pa  # pyarrow: only for a Parquet file
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as err:
            raise DatasetError(f"{path}: not a readable Parquet file ({err})") from None
        for n, row in enumerate(table.to_pylist(), 1):
            yield n, row
        return
    source = str(path)
    # Bytes: one undecodable line must not stop the others. A large buffer: each small read releases
    # the GIL and takes it straight back, so with the default buffer a server's event loop thread
    # waited up to a second for it while a few MB loaded in a worker thread (tests/test_abuse.py).
    with path.open("rb", buffering=16 * 2**20) as handle:
        for n, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                quarantined.append({"line": n, "source": source, "reason": f"not UTF-8: byte {err.start} of the line",
                                    "row": _text_excerpt(raw.decode("utf-8", "backslashreplace"))})
                continue
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, RecursionError) as err:
                msg = err.msg if isinstance(err, json.JSONDecodeError) else "nested too deeply"
                quarantined.append({"line": n, "source": source, "reason": f"not JSON: {msg}", "row": _text_excerpt(line)})
                continue
            if not isinstance(row, dict):
                quarantined.append({"line": n, "source": source, "reason": "not a JSON object", "row": _text_excerpt(line)})
                continue
            yield n, row


def _read_hub(spec: TaskSpec, split: str) -> Iterator[tuple[int, dict[str, Any]]]:
    from datasets import load_dataset  # datasets (slow to import): only for a hub split

    yield from enumerate(load_dataset(spec.hub_id, spec.hub_config, split=spec.splits[split]), 1)


def source_name(cfg: DatasetConfig) -> str:
    """Where a dataset's rows come from: its file, the built-in generator, or its hub id."""
    spec = get_task(cfg.name)
    if cfg.path:
        return str(cfg.path)
    if spec.generate is not None:
        return f"generated:{spec.name}"
    if spec.source_file is not None:
        return spec.source_file.replace("{split}", spec.splits[cfg.split])
    return f"hub:{spec.hub_id}"


def _source_rows(cfg: DatasetConfig, spec: TaskSpec, quarantined: list[dict[str, Any]]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(1-based line or row number, row) of the dataset's source."""
    if cfg.path:
        return _read_local(Path(cfg.path), quarantined)
    if spec.generate is not None:
        return enumerate(spec.generate(cfg.split, cfg.limit, cfg.seed), 1)
    if spec.source_file is not None:
        source, column = spec.splits[cfg.split], spec.split_column
        rows = _read_local(Path(spec.source_file.replace("{split}", source)), quarantined)
        # One file, several splits: this split's rows (a row that names none belongs to every split).
        return rows if column is None else ((n, r) for n, r in rows if r.get(column) is None or str(r[column]) == source)
    if spec.hub_id is None:
        raise ValueError(f"task {spec.name} has no hub id: give a local file (dataset.path)")
    return _read_hub(spec, cfg.split)


def load_records(cfg: DatasetConfig) -> LoadResult:
    """The records of one dataset split, SPEC §8, and the rows quarantined on the way."""
    spec = get_task(cfg.name)
    if cfg.split not in spec.splits:
        raise ValueError(f"{cfg.name} has splits {sorted(spec.splits)}, not {cfg.split!r}")
    quarantined: list[dict[str, Any]] = []
    records, seen = [], set()
    source = source_name(cfg)
    # `index` (0-based, over the rows that parsed) is what converters build ids from, as the hub's
    # row index; `line` (1-based, in the file) is what a person looks up.
    for index, (line, row) in enumerate(_source_rows(cfg, spec, quarantined)):
        try:
            record = checked_record(spec.to_record(row, cfg.split, index), spec)
        except BadRow as err:
            quarantined.append({"line": line, "source": source, "reason": str(err), "row": _excerpt(row)})
            continue
        if record["id"] in seen:
            quarantined.append({"line": line, "source": source, "reason": f"duplicate id {record['id']}",
                                "row": _excerpt(row)})
            continue
        seen.add(record["id"])
        records.append(record)

    if spec.use is not None:
        records = [r for r in records if spec.use(r)]
    if spec.seeded_test_size is not None and cfg.split in ("train", "test"):
        records = _seeded_split(records, cfg.split, cfg.test_size or spec.seeded_test_size, cfg.seed)
    if cfg.limit is not None:
        records = records[: cfg.limit]
    for q in quarantined:
        q["dataset"] = cfg.name
    return LoadResult(records, quarantined)


def _seeded_split(records: list[Record], split: str, test_size: int, seed: int) -> list[Record]:
    """A reproducible train/test partition of one hub split (by a seeded shuffle of ids)."""
    ids = sorted(r["id"] for r in records)
    random.Random(seed).shuffle(ids)
    test_ids = set(ids[: min(test_size, len(ids))])
    keep_test = split == "test"
    return [r for r in records if (r["id"] in test_ids) == keep_test]


def _text_excerpt(text: str, limit: int = 200) -> str:
    text = text.rstrip("\r\n")
    text = text if len(text) <= limit else text[:limit] + "…"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")  # lone surrogates too


def _excerpt(row: Any, limit: int = 300) -> str:
    return _text_excerpt(json.dumps(row, default=str), limit)
