"""The tables between the stages: one typed row and one Arrow schema per table (SPEC §8, §9).

    Record ─▶ GeneratedGroup ─▶ ScoredGroup ─▶ CuratedGroup   curate/groups/, curate/dropped/ (Parquet)
                                                  └─▶ TokenisedGroup   what a training worker reads
    Record ─▶ GeneratedGroup ─▶ Prediction                    eval/*/predictions.jsonl, POST /evaluate

Rows are plain dicts typed by the `TypedDict`s below. Their Arrow schemas are derived from the same
annotations (`arrow_schema`) and every table is built through `to_arrow`, so a column's type never
depends on the rows that happen to be in a batch: a shard whose `choices` or `reference` are all
null is still `list<string>` / `string`, and a curated groups folder reads as one dataset with
pyarrow, Ray Data and `datasets.load_dataset("parquet", ...)`.

`meta` (a record's task-specific fields: a GSM-PLUS perturbation type, an MMLU-Pro category) is a
dict in Python rows and a JSON string in Arrow; `to_arrow` and `from_arrow` convert, nothing else.
"""

from __future__ import annotations

import json
import types
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Iterable, Literal, Mapping, TypedDict, Union, get_args, get_origin, get_type_hints

try:
    from typing import NotRequired
except ImportError:  # Python 3.10
    from typing_extensions import NotRequired

from advdistill.tasks import breakdown_fields

if TYPE_CHECKING:
    import pyarrow as pa

# How a response ended: "stop" = the model ended its turn; "length" = cut at the token limit
# (vLLM's names). A truncated response is incorrect whatever it says (SPEC §3).
FinishReason = Literal["stop", "length"]
ENDED: FinishReason = "stop"
TRUNCATED: FinishReason = "length"


class Record(TypedDict):
    """A dataset item (SPEC §8), whatever the task."""

    id: str  # stable and unique within its dataset
    task: str  # a registered task (advdistill.tasks)
    question: str
    reference: str | None  # None: the question cannot be answered (GSM-PLUS critical thinking)
    choices: list[str] | None  # multiple choice only
    meta: dict[str, Any]  # task-specific fields; JSON text in Arrow


class GeneratedGroup(Record):
    """A record and a model's responses to it (one for evaluation, K for curation)."""

    prompt: str
    responses: list[str]
    token_lengths: list[int]  # generated tokens, the stop token included
    finish_reasons: list[str]  # FinishReason


class ScoredGroup(GeneratedGroup):
    """SPEC §3–§5: each response judged and rewarded, the group's advantages and keep decision."""

    correct: list[bool]
    format_ok: list[bool]
    rewards: list[float]
    advantages: list[float]
    keep: bool


class CuratedGroup(ScoredGroup):
    """A row of the groups table (curate/groups/ kept, curate/dropped/ not): the contract between
    curation and training."""

    teacher: str
    sampling: str  # JSON of the curate.sampling settings
    # What a teacher behind an endpoint (`backend: openai`) was asked for this group, as the server
    # counted it: requests sent (the client's retries included) and the prompt and completion
    # tokens of their `usage`. None where the teacher is local (accelerator-hours account for it).
    # Optional in a row (`to_arrow` fills None): groups built without a teacher, older shards.
    requests: NotRequired[int | None]
    prompt_tokens: NotRequired[int | None]
    completion_tokens: NotRequired[int | None]


class TokenisedGroup(TypedDict):
    """A curated group as a training worker reads it: the zero-shot student prompt and the
    responses the training method selected, as token ids."""

    id: str
    keep: bool  # False: dropped by the keep rule on the first K' responses (counted, not trained on)
    val: bool  # held out for validation (by id hash)
    prompt_ids: list[int]
    response_ids: list[list[int]]
    advantages: list[float]
    correct: list[bool]
    truncated: list[bool]  # cut at train.max_seq_len
    truncated_responses: int
    # Why the group is not trained on at all (its prompt alone fills train.max_seq_len), else
    # None; a skipped group has keep False, no token ids, and is counted in the training result.
    skipped: str | None


class Prediction(TypedDict):
    """One evaluated item. Followed by one `str | None` column per `meta` field the registered
    tasks break results down by (`breakdown_fields()`: perturbation_type, category)."""

    id: str
    response: str
    extracted: str | None  # the final answer read from the response
    correct: bool
    tokens: int
    finish_reason: str  # FinishReason
    cluster: str  # the related items it was drawn with (tasks.record_cluster); its own id if none


def columns(row_type: type) -> tuple[str, ...]:
    """The columns of a table, in order."""
    return tuple(get_type_hints(row_type))


OPTIONAL = {b"optional": b"true"}  # field metadata of a `NotRequired` column: a row may leave it out


def _arrow_type(annotation: Any) -> "pa.DataType":
    import pyarrow as pa  # pyarrow: the Arrow side only; the row types need none

    if get_origin(annotation) is NotRequired:
        (annotation,) = get_args(annotation)
    if get_origin(annotation) in (Union, types.UnionType):  # X | None: every Arrow column is nullable
        (annotation,) = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) is list:
        return pa.list_(_arrow_type(get_args(annotation)[0]))
    if get_origin(annotation) is dict:
        return pa.string()  # meta: JSON text
    return {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_()}[annotation]


@lru_cache(maxsize=None)
def arrow_schema(row_type: type) -> "pa.Schema":
    """The Arrow schema of a typed row."""
    import pyarrow as pa  # pyarrow: the Arrow side only; the row types need none

    # With the extras: `NotRequired` is read from the annotations themselves (under postponed
    # annotations Python 3.11's TypedDict does not see it: `__optional_keys__` stays empty).
    return pa.schema([pa.field(name, _arrow_type(kind), metadata=OPTIONAL if get_origin(kind) is NotRequired else None)
                      for name, kind in get_type_hints(row_type, include_extras=True).items()])


def prediction_schema() -> "pa.Schema":
    import pyarrow as pa  # pyarrow: the Arrow side only; the row types need none

    return pa.schema([*arrow_schema(Prediction), *(pa.field(name, pa.string()) for name in breakdown_fields())])


def to_arrow(rows: Iterable[Mapping[str, Any]], schema: "pa.Schema", extra: Iterable[str] = ()) -> "pa.Table":
    """Rows as a table of `schema`, `meta` as JSON. Every schema column must be in every row, but
    for the optional ones (`NotRequired`: None when left out); `extra` names further columns that
    ride along (their type inferred, e.g. an evaluation's split label)."""
    import pyarrow as pa  # pyarrow: the Arrow side only; the row types need none

    extra = [name for name in extra if name not in schema.names]
    names = [*schema.names, *extra]
    optional = {f.name for f in schema if f.metadata == OPTIONAL}
    table: dict[str, list[Any]] = {name: [] for name in names}
    for row in rows:
        for name in names:
            if name not in row and name not in optional:
                raise KeyError(f"row {row.get('id')!r} has no column {name!r}")
            value = row.get(name)
            if name == "meta":
                if not isinstance(value, Mapping):
                    raise TypeError(f"row {row.get('id')!r}: meta must be a dict, got {type(value).__name__}")
                value = json.dumps(value)
            table[name].append(value)
    fields = list(schema)
    arrays = [pa.array(table[f.name], type=f.type) for f in fields]
    for name in extra:
        arrays.append(pa.array(table[name]))
        fields.append(pa.field(name, arrays[-1].type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def from_arrow(table: "pa.Table") -> list[dict[str, Any]]:
    """A table's rows as dicts, `meta` decoded."""
    rows = table.to_pylist()
    if "meta" in table.column_names:
        for row in rows:
            row["meta"] = json.loads(row["meta"])
    return rows
