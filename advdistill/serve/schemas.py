"""The evaluation API's request, answer and error schemas: every string and list bounded,
NaN/Infinity, NUL bytes and lone surrogates refused, and validation issues that name the field
with a short excerpt of the input, never the input itself (`issue`; `error_handlers` answers
them)."""

from __future__ import annotations

import re
import reprlib
from functools import lru_cache
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, create_model, model_validator

from advdistill.data.loaders import DATASET_SUFFIXES
from advdistill.tasks import MAX_OPTIONS, TASKS, TaskName, breakdown_fields, task_names

# ------------------------------------------------------------------------------ request schema

MAX_QUESTION_CHARS = 100_000
MAX_CHOICE_CHARS = 10_000
MAX_REFERENCE_CHARS = 1_000
MAX_NAME_CHARS = 200
MAX_PATH_CHARS = 1_000
MAX_FEW_SHOT = 16  # the schema's bound; the exemplars available bound it further (422)
MAX_SEED = 2**63 - 1
MAX_COUNT = 2**31 - 1  # limit, max_tokens: the configured limits (413) are far below
_FORBIDDEN_CHARS = re.compile("[\x00\ud800-\udfff]")


def _clean_text(value: str) -> str:
    found = _FORBIDDEN_CHARS.search(value)
    if found:
        raise ValueError(f"must not contain NUL bytes or lone surrogates (U+{ord(found.group()):04X} at "
                         f"position {found.start()})")
    return value


# Every string of a request: NUL bytes and lone surrogates are refused (422), as pydantic refuses
# invalid UTF-8; each use adds its length limit.
Text = Annotated[str, AfterValidator(_clean_text)]


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


class Item(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: Text = Field(min_length=1, max_length=MAX_QUESTION_CHARS,
                           description="the question; its prompt must fit the model's context with max_tokens (422)")
    reference: Text | None = Field(None, max_length=MAX_REFERENCE_CHARS,
                                   description="gold answer (a plain number for number tasks, an option letter for "
                                               "multiple choice); null for GSM-PLUS 'critical thinking' items")
    task: TaskName = Field(max_length=64, description=f"the task (verifier and prompt format): {', '.join(task_names())}")
    choices: list[Annotated[Text, Field(max_length=MAX_CHOICE_CHARS)]] | None = Field(
        None, min_length=1, max_length=MAX_OPTIONS,
        description=f"multiple-choice options (at most {MAX_OPTIONS}, lettered from A)")
    id: Text | None = Field(None, max_length=MAX_NAME_CHARS)


class DatasetRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: TaskName = Field(max_length=64)
    split: Text = Field(min_length=1, max_length=50)
    limit: int | None = Field(None, ge=1, le=MAX_COUNT, description="first N records (at most serve.max_items: 413)")
    path: Text | None = Field(None, min_length=1, max_length=MAX_PATH_CHARS,
                              description=f"a {'/'.join(DATASET_SUFFIXES)} file relative to the server's data root; "
                                          "required for hub datasets unless the server allows hub loads")


class Sampling(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    temperature: float | None = Field(None, ge=0, le=2, description="default: greedy (0)")
    max_tokens: int | None = Field(None, ge=1, le=MAX_COUNT,
                                   description="default: the config's eval.max_tokens; at most serve.max_request_tokens "
                                               "(413)")
    few_shot: int | None = Field(None, ge=0, le=MAX_FEW_SHOT,
                                 description="default: the model's (k for base models, 0 otherwise); at most the "
                                             "exemplars available for the task (4 built in; 422 beyond)")
    seed: int = Field(0, ge=0, le=MAX_SEED)


class EvaluateRequest(BaseModel):
    """Exactly one of `items` or `dataset`."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"oneOf": [{"required": ["items"]}, {"required": ["dataset"]}]},
    )
    model: Text = Field(min_length=1, max_length=MAX_NAME_CHARS, description="a served model (GET /models)")
    items: list[Item] = Field(None, min_length=1, json_schema_extra=_no_default,  # type: ignore[assignment]
                              description="the items to evaluate (at most serve.max_items: 413); not with 'dataset'")
    dataset: DatasetRef = Field(None, json_schema_extra=_no_default,  # type: ignore[assignment]
                                description="a dataset split to evaluate; not with 'items'")
    sampling: Sampling = Sampling()

    @model_validator(mode="after")
    def _one_source(self) -> "EvaluateRequest":
        if (self.items is None) == (self.dataset is None):
            raise ValueError("give exactly one of 'items' or 'dataset'")
        return self


# ------------------------------------------------------------------------------ response schema
# What each route returns, so that /openapi.json describes it and clients can be generated from it.


class Health(BaseModel):
    status: str = Field(description='"ok" while the ingress replica answers')


class ModelInfo(BaseModel):
    name: str = Field(description="the name requests use (`model`)")
    checkpoint: str = Field(description="its folder, relative to serve.checkpoint_root")
    base_model: bool = Field(description="a base model: prompted k-shot by default")
    few_shot: int = Field(description="exemplars per prompt when a request gives none")
    engine: str = Field(description='"auto", "vllm" or "transformers"')
    max_tokens: int = Field(description="the default generation budget")
    max_model_len: int = Field(description="the engine's context (prompt + response)")


class OnDemand(BaseModel):
    max_per_replica: int = Field(description="checkpoints a replica keeps loaded (least recently used out)")
    loaded: list[str] = Field(description="checkpoints loaded on the replica that answered, least recently used first")
    available: list[str] = Field(description="model folders under serve.checkpoint_root that `model` may name "
                                             "(relative paths; the first 200)")


class ModelList(BaseModel):
    models: list[ModelInfo] = Field(description="the configured models, by name")
    on_demand: OnDemand | None = Field(None, description="checkpoints served on demand (null: serve.on_demand off)")


class TemplateShares(BaseModel):
    think: float = Field(description="share of responses with a <think>…</think> block")
    answer: float = Field(description="share with an <answer>…</answer> block")
    boxed: float = Field(description="share with a \\boxed{}")
    all: float = Field(description="share with all three")


class Metrics(BaseModel):
    """SPEC §7 over a set of items."""

    n: int
    accuracy: float
    accuracy_interval: list[float] = Field(description="95% Wilson interval [low, high]")
    mean_tokens_correct: float | None = Field(description="None where no item is correct")
    mean_tokens_incorrect: float | None = Field(description="None where every item is correct")
    verbosity_ratio: float | None = Field(description="mean_tokens_incorrect / mean_tokens_correct")
    degeneracy: float | None = Field(description="mean seq-rep-4 × 100")
    degeneracy_correct: float | None
    degeneracy_incorrect: float | None
    template: TemplateShares


class _ItemFields(BaseModel):
    """What every evaluated item has (`schema.Prediction`); `ItemResult` adds the breakdown fields."""

    id: str
    response: str
    extracted: str | None = Field(description="the final answer read from the response")
    correct: bool
    tokens: int = Field(description="generated tokens, the stop token included")
    finish_reason: Literal["stop", "length"]
    cluster: str = Field(description="the cluster of related items the record was drawn in (a synthetic skeleton, a "
                                     "GSM-PLUS seed question; else the item's id): what an interval resamples together")


class QuarantinedRow(BaseModel):
    """A dataset row left out, with why: unreadable (line, source) or too long (id, token counts)."""

    model_config = ConfigDict(extra="allow")
    reason: str
    id: str | None = None
    line: int | None = None
    source: str | None = None


class ResponseModels(NamedTuple):
    """The response models whose fields the task registry decides: one `by_<field>` metrics
    breakdown and one per-item field for each `meta` field a task breaks results down by
    (`TaskSpec.group_by`), so a task registered with a new one reaches the API's answers and
    /openapi.json with no edit here."""

    EvaluateMetrics: type[Metrics]
    ItemResult: type[_ItemFields]
    EvaluateResponse: type[BaseModel]
    EvaluationJob: type[BaseModel]


def response_models() -> ResponseModels:
    """The response models for the tasks registered now (the same classes while they are)."""
    return _response_models(tuple((field, tuple(spec.name for spec in TASKS.entries() if spec.group_by == field))
                                  for field in breakdown_fields()))


@lru_cache(maxsize=None)
def _response_models(breakdowns: tuple[tuple[str, tuple[str, ...]], ...]) -> ResponseModels:
    """`breakdowns`: each breakdown field with the tasks that group by it."""
    metrics_model = create_model(
        "EvaluateMetrics", __base__=Metrics, __module__=__name__,
        __doc__="The overall metrics and, for datasets a task breaks down (`tasks.breakdown_fields`), the same "
                "per value of that field.",
        **{f"by_{field}": (dict[str, Metrics] | None,
                           Field(None, description=f"per value of the records' meta.{field} ({', '.join(tasks)})"))
           for field, tasks in breakdowns})
    item_model = create_model(
        "ItemResult", __base__=_ItemFields, __module__=__name__,
        **{field: (str | None, Field(None, description=f"the record's meta.{field} ({', '.join(tasks)}; null for "
                                                       "other tasks)"))
           for field, tasks in breakdowns})

    class EvaluateResponse(BaseModel):
        model: str
        few_shot: int
        metrics: metrics_model  # type: ignore[valid-type]
        results: list[item_model]  # type: ignore[valid-type]
        quarantined: list[QuarantinedRow] | None = Field(None, description="dataset requests: the first rows left out")
        quarantined_count: int | None = Field(None, description="dataset requests: how many rows were left out")

    class EvaluationJob(BaseModel):
        """An evaluation running in the background (`POST /evaluations`), polled with its id."""

        id: str
        model: str
        status: Literal["queued", "running", "done", "failed", "interrupted"] = Field(
            description="queued again when the replica running it stopped (a live replica restarts it); "
                        "interrupted: that happened serve.job_attempts times; submit it again")
        done: int = Field(description="items generated so far")
        total: int = Field(description="items to generate (those that fit the model's context)")
        result: EvaluateResponse | None = Field(None, description="when done: what /evaluate returns")
        error: str | None = Field(None, description="when failed or interrupted: why")
        created_at: float = Field(description="Unix time")
        updated_at: float | None = Field(None, description="Unix time of the last state written")
        attempts: int = Field(1, description="times the job has started (more than 1 after its replica stopped)")

    for model in (EvaluateResponse, EvaluationJob):
        model.__qualname__ = model.__name__  # as the module's own names: picklable by reference
    return ResponseModels(metrics_model, item_model, EvaluateResponse, EvaluationJob)


# The routes' models, for the tasks registered when the API is imported (every entry of `tasks`).
EvaluateMetrics, ItemResult, EvaluateResponse, EvaluationJob = response_models()


# ------------------------------------------------------------------------------ error bodies


class ErrorBody(BaseModel):
    detail: str


class ValidationIssue(BaseModel):
    type: str
    loc: list[str | int]
    msg: str
    input: str | None = Field(None, description="a short excerpt of the value at fault")


class ValidationErrorBody(BaseModel):
    detail: list[ValidationIssue]


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "a body that cannot be read as JSON at all, or a bad Content-Length"},
    401: {"model": ErrorBody, "description": "missing or invalid bearer token (checked before the body is read)"},
    408: {"model": ErrorBody, "description": "the body did not arrive within serve.body_timeout_s"},
    404: {"model": ErrorBody, "description": "unknown model, or a dataset file not found inside the data root"},
    413: {"model": ErrorBody, "description": "over a limit: body size, items, prompt characters, max_tokens, dataset "
                                             "limit or file size"},
    422: {"model": ValidationErrorBody, "description": "the field at fault (loc) and why; at most a short excerpt "
                                                      "of the input"},
    502: {"model": ErrorBody, "description": "the hub could not be reached (only with serve.allow_hub)"},
    503: {"model": ErrorBody, "description": "the model server could not generate (an engine failure), the "
                                             "on-demand engines are all busy (Retry-After), or the job store is "
                                             "unavailable"},
    504: {"model": ErrorBody, "description": "loading the dataset took longer than serve.load_timeout_s"},
}
AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {401: ERROR_RESPONSES[401]}
JOB_LIMIT_RESPONSE: dict[str, Any] = {"model": ErrorBody, "description": "serve.max_concurrent_jobs jobs are running"}

MAX_ERRORS_SHOWN = 20
EXCERPT_CHARS = 80
_repr = reprlib.Repr()
_repr.maxstring, _repr.maxother, _repr.maxlist, _repr.maxdict, _repr.maxlevel = EXCERPT_CHARS, EXCERPT_CHARS, 4, 4, 2


def excerpt(value: Any, limit: int = EXCERPT_CHARS) -> str | None:
    """A short, JSON-safe excerpt of any input (NaN, surrogates and 20 MB strings included)."""
    if value is None:
        return None
    text = value if isinstance(value, str) else _repr.repr(value)
    if len(text) > limit:
        text = text[:limit] + "…"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _safe_loc(part: Any) -> str | int:
    return part if isinstance(part, int) and not isinstance(part, bool) else excerpt(str(part), 100) or ""


def issue(loc: list[Any], msg: str, kind: str = "value_error", value: Any = None) -> dict[str, Any]:
    return {"type": kind, "loc": [_safe_loc(p) for p in loc], "msg": excerpt(msg, 500) or "", "input": excerpt(value)}
