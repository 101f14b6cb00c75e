"""A task declared in a config (`task:`, `advdistill.config.TaskConfig`) becomes a registry entry
like the built-in ones (`advdistill.tasks.TaskSpec`): its rows come from a local file or a hub
dataset, its columns map to the record's fields (the others go to `meta`), and its answers are
judged by a built-in kind or the task's own verifier. From then on it is a task everywhere: the
loaders, prompts, scoring, the evaluator, the report and the API read it from the registry.

How a declared task reaches every process. The config registers it when it is read (`declare`,
called by its validation), and `declare` exports every task this process declared in
`ADVDISTILL_TASKS` (JSON): processes started from here inherit it, `ray.init` forwards it to the
job's workers by name (`local_ray.FORWARDED_BY_NAME`), and the Serve app gives it to its replicas
(`serve.app.build_app`). A process whose environment holds it registers those tasks when it
first imports the package (`advdistill/__init__.py` → `config.declare_exported_tasks`), before
any module reads the registry — the API's request and response schemas included. The user's
module (a custom verifier, an extra reward term) is imported only where it is called; it travels
with the job (`ray job submit --working-dir` / `py_modules`).

`check_source` is the check that reads files (a mapped column missing from the first rows, a
split the file does not have): the entry points run it before Ray starts (`advdistill.cli`).
This module reads no config class (the config imports it): declarations are taken as they are.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from advdistill.tasks import TASKS, BadRow, TaskSpec, register_task, task_names, text_field

if TYPE_CHECKING:
    from advdistill.config import TaskConfig

ENV_VAR = "ADVDISTILL_TASKS"
SEEDED = "seeded_test_size"  # `splits: {seeded_test_size: N[, source: SPLIT]}`
FIRST_ROWS = 100  # rows read to check that the mapped columns exist

_declared: dict[str, dict[str, Any]] = {}  # name -> the declaration as JSON data, in declaration order


def declare(task: "TaskConfig") -> TaskSpec:
    """Register a declared task (again: the same declaration is a no-op, a changed one replaces
    it) and export the process's declarations to the processes it starts (`ENV_VAR`)."""
    data = task.model_dump(mode="json")
    name = task.name
    if name is None:
        raise ValueError("task.name: a declared task needs a name")
    if _declared.get(name) == data:
        return TASKS.get(name)
    if name in task_names() and name not in _declared:
        raise ValueError(f"task.name: {name!r} is a built-in task; give your task another name")
    spec = build_spec(task)
    if name in _declared:
        TASKS.remove(name)
    register_task(spec)
    _declared[name] = data
    _export()
    return spec


def forget(name: str) -> None:
    """Unregister a declared task (a test's own, when it is done) and stop exporting it."""
    if _declared.pop(name, None) is not None:
        TASKS.remove(name)
        _export()


def declared() -> list[dict[str, Any]]:
    """The declarations registered in this process, as JSON data."""
    return list(_declared.values())


def _export() -> None:
    if _declared:
        os.environ[ENV_VAR] = json.dumps(declared())
    else:
        os.environ.pop(ENV_VAR, None)


def exported() -> list[dict[str, Any]]:
    """The declarations a parent process exported to this one."""
    text = os.environ.get(ENV_VAR, "").strip()
    return json.loads(text) if text else []


# ---------------------------------------------------------------- declaration -> TaskSpec


def source_splits(task: "TaskConfig") -> tuple[dict[str, str], int | None]:
    """Our split -> the source split it is read from (the hub's name, after `source.split_map`),
    and the seeded test size where one source split is partitioned."""
    splits = dict(task.splits)
    if SEEDED in splits:
        source = str(splits.get("source", "train"))
        ours, test_size = {"train": source, "test": source}, int(splits[SEEDED])
    else:
        ours, test_size = {str(k): str(v) for k, v in splits.items()}, None
    return {k: task.source.split_map.get(v, v) for k, v in ours.items()}, test_size


def split_column(task: "TaskConfig") -> str | None:
    """The column telling a local file's splits apart: one file (no `{split}` in its path) read
    for more than one source split."""
    splits, seeded = source_splits(task)
    path = task.source.path
    if path is None or "{split}" in path or seeded is not None or len(set(splits.values())) < 2:
        return None
    return task.fields.split


def build_spec(task: "TaskConfig") -> TaskSpec:
    splits, test_size = source_splits(task)
    column = task.fields.cluster
    return TaskSpec(
        task.name, task.answer, _converter(task), splits, hub_id=task.source.hub, hub_config=task.source.config,
        seeded_test_size=test_size, group_by=task.group_by,
        cluster=(lambda record: _cluster_of(record, column)) if column else None,
        pattern=task.pattern, verifier=task.verifier, verifier_time_limit_s=task.verifier_time_limit_s,
        source_file=task.source.path, split_column=split_column(task))


def _cluster_of(record: dict[str, Any], column: str) -> str | None:
    value = record["meta"].get(column)
    return None if value is None or value == "" else f"{column}:{value}"


def _converter(task: "TaskConfig"):
    fields, name, group_by = task.fields, task.name, task.group_by
    source_split = source_splits(task)[0]  # ids by source split: the same rows get the same ids in every split
    mapped = {fields.id, fields.question, fields.answer, fields.choices}
    if split_column(task):
        mapped.add(fields.split)

    def convert(row: dict[str, Any], split: str, index: int) -> dict[str, Any]:
        question, reference = text_field(row, fields.question), text_field(row, fields.answer)
        choices = None
        if fields.choices:
            options = row.get(fields.choices)
            if not isinstance(options, (list, tuple)):
                raise BadRow(f"field '{fields.choices}' is not a list of options")
            choices = [str(option) for option in options]
            reference = reference.upper()
        # The row's other columns, as JSON (Parquet rows may hold dates or bytes); the breakdown
        # field as text, as every task's is.
        meta = json.loads(json.dumps({k: v for k, v in row.items() if k not in mapped}, default=str))
        if group_by and meta.get(group_by) is not None:
            meta[group_by] = str(meta[group_by])
        record_id = text_field(row, fields.id) if fields.id else f"{name}-{source_split[split]}-{index:05d}"
        return {"id": record_id, "task": name,
                "question": question, "reference": reference, "choices": choices, "meta": meta}

    return convert


# ---------------------------------------------------------------- the checks that read files


def check_source(task: "TaskConfig") -> None:
    """A declared task's local file(s) exist, have the mapped columns in their first rows and hold
    every split the task names; ValueError naming the field otherwise. Hub sources are checked
    when they load (`advdistill.preflight` checks that the hub is reachable)."""
    if task.name is None or task.source.path is None:
        return
    splits, _ = source_splits(task)
    pattern, column = task.source.path, split_column(task)
    for source in sorted(set(splits.values())) if "{split}" in pattern else [None]:
        path = Path(pattern.replace("{split}", source) if source else pattern)
        if not path.is_file():
            where = f" (split {source!r})" if source else ""
            raise ValueError(f"task.source.path: {path}{where} is not a file (relative paths are relative to the "
                             f"working directory, {os.getcwd()})")
        seen = _first_columns(path)
        wanted = {"id": task.fields.id, "question": task.fields.question, "answer": task.fields.answer,
                  "choices": task.fields.choices, "cluster": task.fields.cluster}
        if column:
            wanted["split"] = column
        for field, name in wanted.items():
            if name is not None and name not in seen:
                raise ValueError(f"task.fields.{field}: column {name!r} is not in {path} (its first {FIRST_ROWS} "
                                 f"rows have {', '.join(sorted(seen)) or 'no columns'})")
        if task.group_by is not None and task.group_by not in seen:
            raise ValueError(f"task.group_by: column {task.group_by!r} is not in {path} (its first rows have "
                             f"{', '.join(sorted(seen))})")
        if column:
            present = _split_values(path, column)
            missing = sorted(set(splits.values()) - present)
            if missing:
                raise ValueError(f"task.splits: {path} has no rows of split {', '.join(map(repr, missing))} in its "
                                 f"{column!r} column (it has {', '.join(map(repr, sorted(present)))})")


def _rows(path: Path, limit: int | None = None, columns: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """Rows of a local JSONL/Parquet file (lines that are not JSON objects are skipped here; the
    loader quarantines them)."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq  # pyarrow: only for a Parquet file

        parquet = pq.ParquetFile(path)
        names = [c for c in (columns or parquet.schema_arrow.names) if c in parquet.schema_arrow.names]
        if limit is not None and not names:
            return
        for batch in parquet.iter_batches(batch_size=limit or 65_536, columns=names or None):
            yield from batch.to_pylist()
            if limit is not None:
                return
        return
    count = 0
    with path.open("rb") as handle:
        for raw in handle:
            try:
                row = json.loads(raw)
            except ValueError:
                continue
            if isinstance(row, dict):
                yield row
                count += 1
                if limit is not None and count >= limit:
                    return


def _first_columns(path: Path) -> set[str]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq  # pyarrow: only for a Parquet file

        return set(pq.read_schema(path).names)
    return {key for row in _rows(path, FIRST_ROWS) for key in row}


def _split_values(path: Path, column: str) -> set[str]:
    return {str(row[column]) for row in _rows(path, columns=[column]) if row.get(column) is not None}


def with_declared_tasks(options: dict[str, Any] | None) -> dict[str, Any] | None:
    """Ray actor options whose runtime env also carries this process's declared tasks (`ENV_VAR`),
    for actors that must have them registered when they import the package (the Serve ingress
    builds its schemas then); `options` unchanged when no task is declared."""
    if not _declared:
        return options
    options = dict(options or {})
    runtime_env = dict(options.get("runtime_env") or {})
    runtime_env["env_vars"] = {ENV_VAR: json.dumps(declared()), **(runtime_env.get("env_vars") or {})}
    options["runtime_env"] = runtime_env
    return options
