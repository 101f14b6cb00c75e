"""The task registry: everything a dataset name in a config or a request selects (SPEC §3, §8).

A task says how its answers are judged (`answer`: a plain number, a math expression, or an
option letter), where its rows come from (a hub id, a built-in generator, or only a local file)
and how a row becomes a record (`to_record`), which splits it has, which `meta` field evaluation
results are broken down by (`group_by`), which records were drawn together and must be resampled
together by an interval (`cluster`: a synthetic skeleton, a GSM-PLUS seed question), and whether a
record may have no reference (`reference_optional`: GSM-PLUS "critical thinking" items, whose
right answer is that the question cannot be answered).

The loaders, prompts, scoring, the config's and the API's task names all read it from here, so
adding a task is one `register_task(TaskSpec(...))` plus its tests, as verl's
`default_compute_score` dispatches on a data source. Of the project it imports only the registry
mechanism and the embedded tasks' generators (`advdistill.data.synthetic` and
`advdistill.data.relations`, which import only the template text), so any of them can import it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Literal, Mapping

from pydantic import AfterValidator

from advdistill.data import relations
from advdistill.data.synthetic import make_split
from advdistill.registry import Registry

# "number": the reference is a plain number (checked when loading); "math": any math expression
# (math-verify judges it); "multiple_choice": the reference is an option letter; "exact": the
# answer equals the reference once both are normalised (`scoring.verify.normalise`); "regex": the
# answer matches `TaskSpec.pattern` in full; "custom": the task's own `verifier` decides.
AnswerKind = Literal["number", "math", "multiple_choice", "exact", "regex", "custom"]
ANSWER_KINDS: tuple[str, ...] = AnswerKind.__args__

# Multiple-choice options are listed as `A. …` to `J. …` (MMLU-Pro has at most ten).
OPTION_LETTERS = "ABCDEFGHIJ"
MAX_OPTIONS = len(OPTION_LETTERS)


class BadRow(ValueError):
    """A source row that cannot become a record; the message is the quarantine reason."""


# (source row, split, index of the row in its source split) -> record (SPEC §8 fields); raises BadRow.
RowConverter = Callable[[dict[str, Any], str, int], dict[str, Any]]
# (split, limit, seed) -> rows of a built-in task (the first n of a larger call are the same rows).
Generator = Callable[[str, "int | None", int], list[dict[str, Any]]]


@dataclass(frozen=True)
class TaskSpec:
    name: str
    answer: AnswerKind
    to_record: RowConverter
    # Our split name -> the source split it is read from.
    splits: Mapping[str, str]
    hub_id: str | None = None
    hub_config: str | None = None
    # Rows made here rather than read (the synthetic task); a local file still takes precedence.
    generate: Generator | None = None
    # A seeded train/test partition of one source split where the source has none: the test size.
    seeded_test_size: int | None = None
    # Which records of a split are used at all (open-rs: its hard problems).
    use: Callable[[dict[str, Any]], bool] | None = None
    # The `meta` field evaluation results are broken down by (perturbation type, category).
    group_by: str | None = None
    reference_optional: bool = False
    # A record -> the cluster of related items it was drawn in (a synthetic skeleton, a GSM-PLUS
    # seed question), resampled together by the intervals; None (or a None answer): its own.
    cluster: Callable[[dict[str, Any]], str | None] | None = None
    # "regex": the pattern a correct answer matches in full, `{reference}` standing for the record's
    # reference (escaped); without one, the reference itself is the pattern.
    pattern: str | None = None
    # "custom": `module:function(extracted, reference, record) -> bool`, run in a worker process
    # killed after `verifier_time_limit_s` (`scoring.custom_verifier`).
    verifier: str | None = None
    verifier_time_limit_s: float = 1.0
    # Rows from a local file when the dataset names none (a declared task): `{split}` in it stands
    # for the source split; one file holding several splits says which in its `split_column`.
    source_file: str | None = None
    split_column: str | None = None

    @property
    def multiple_choice(self) -> bool:
        return self.answer == "multiple_choice"


TASKS: Registry[TaskSpec] = Registry("task")
get_task = TASKS.get
task_names = TASKS.names


def register_task(spec: TaskSpec) -> TaskSpec:
    """Add a task; its name is then valid in configs, requests, loaders and scoring."""
    return TASKS.register(spec.name, spec)


def breakdown_fields() -> tuple[str, ...]:
    """The `meta` fields any registered task breaks evaluation results down by, in order."""
    return tuple(dict.fromkeys(spec.group_by for spec in TASKS.entries() if spec.group_by))


def record_cluster(record: dict[str, Any]) -> str:
    """The cluster a record was drawn in (`TaskSpec.cluster`), or the record's own id where its
    task names none: every evaluated item carries it (`Prediction.cluster`), so the intervals of
    `advdistill.evaluation.stats` can be recomputed from saved predictions."""
    spec = get_task(record["task"])
    return (spec.cluster(record) if spec.cluster else None) or record["id"]


def _known_task(name: str) -> str:
    get_task(name)
    return name


# A task name as configs and requests give it: validated against the registry when it is read.
TaskName = Annotated[str, AfterValidator(_known_task)]


# ---------------------------------------------------------------- the built-in tasks


def text_field(row: dict[str, Any], key: str) -> str:
    """A row's non-empty text (or number) field, stripped; BadRow otherwise."""
    value = row.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise BadRow(f"missing or empty field '{key}'")
    if not isinstance(value, (str, int, float)):
        raise BadRow(f"field '{key}' is not text")
    return str(value).strip()


def _gsm8k(row: dict[str, Any], split: str, index: int) -> dict[str, Any]:
    question, answer = text_field(row, "question"), text_field(row, "answer")
    if "####" not in answer:
        raise BadRow("unparsable reference: no '#### answer' line")
    return {"id": f"gsm8k-{split}-{index:05d}", "task": "gsm8k", "question": question,
            "reference": answer.split("####")[-1].strip().replace(",", ""), "choices": None,
            "meta": {"solution": answer}}


def _gsm_plus(row: dict[str, Any], split: str, index: int) -> dict[str, Any]:
    question, kind = text_field(row, "question"), text_field(row, "perturbation_type")
    raw = text_field(row, "answer").replace(",", "")
    return {"id": f"gsm_plus-{split}-{index:05d}", "task": "gsm_plus", "question": question,
            # "critical thinking" items have no answer: the model should say so (SPEC §3).
            "reference": None if raw.lower() == "none" else raw, "choices": None,
            "meta": {"perturbation_type": kind, "seed_question": row.get("seed_question")}}


def _seed_question_cluster(record: dict[str, Any]) -> str | None:
    """GSM-PLUS perturbs each GSM8K question eight ways: the items of one seed question are related."""
    seed = record["meta"].get("seed_question")
    if not isinstance(seed, str) or not seed.strip():
        return None
    return f"seed-question:{hashlib.sha1(seed.strip().encode()).hexdigest()[:16]}"


def _open_math(task: str) -> RowConverter:
    def convert(row: dict[str, Any], split: str, index: int) -> dict[str, Any]:
        level = row.get("level")
        return {"id": f"{task}-{index:05d}",  # index in the hub split: stable across our splits
                "task": task, "question": text_field(row, "problem"), "reference": text_field(row, "answer"),
                "choices": None, "meta": {"level": None if level is None else str(level), "source": row.get("source")}}

    return convert


def _mmlu_pro(row: dict[str, Any], split: str, index: int) -> dict[str, Any]:
    options = row.get("options")
    return {"id": f"mmlu_pro-{row.get('question_id', index)}", "task": "mmlu_pro", "question": text_field(row, "question"),
            "reference": text_field(row, "answer").upper(),
            "choices": [str(o) for o in options] if isinstance(options, (list, tuple)) else options,
            "meta": {"category": row.get("category"), "src": row.get("src")}}


def _synthetic_record(row: dict[str, Any], split: str, index: int) -> dict[str, Any]:
    """The synthetic task's rows are records already (generated, or a local file of them)."""
    return {"id": text_field(row, "id"), "task": "synthetic", "question": text_field(row, "question"),
            "reference": text_field(row, "reference"), "choices": None, "meta": dict(row.get("meta") or {})}


def _skeleton_cluster(record: dict[str, Any]) -> str | None:
    """Synthetic items of one arithmetic skeleton (start and operations) are the same computation."""
    skeleton = record["meta"].get("skeleton")
    return f"skeleton:{skeleton}" if skeleton else None


# `curate`: the prompts the demo curates, unseen by the embedded models (advdistill.data.synthetic).
SYNTHETIC_SIZES = {"train": 5000, "curate": 5000, "val": 500, "test": 1000, "ood": 1000}


def _synthetic_split(split: str, limit: int | None, seed: int) -> list[dict[str, Any]]:
    return make_split(split, limit if limit is not None else SYNTHETIC_SIZES[split], seed=seed)


# open-rs levels counted as "hard" (case-insensitive); the paper evaluates 850 of them.
OPEN_RS_HARD_LEVELS = ("hard",)


def _open_rs_hard(record: dict[str, Any]) -> bool:
    return (record["meta"]["level"] or "").strip().lower() in OPEN_RS_HARD_LEVELS


register_task(TaskSpec("gsm8k", "number", _gsm8k, {"train": "train", "test": "test"},
                       hub_id="openai/gsm8k", hub_config="main"))
# OOD for gsm8k; its "critical thinking" items have no reference.
register_task(TaskSpec("gsm_plus", "number", _gsm_plus, {"testmini": "testmini", "test": "test"},
                       hub_id="qintongli/GSM-Plus", group_by="perturbation_type", reference_optional=True,
                       cluster=_seed_question_cluster))
register_task(TaskSpec("open_s1", "math", _open_math("open_s1"), {"train": "train", "test": "train"},
                       hub_id="knoveleng/open-s1", seeded_test_size=553))
# OOD set: the hard problems of open-rs' only split (one level, so no breakdown by it).
register_task(TaskSpec("open_rs", "math", _open_math("open_rs"), {"test": "train"}, hub_id="knoveleng/open-rs",
                       use=_open_rs_hard))
register_task(TaskSpec("mmlu_pro", "multiple_choice", _mmlu_pro,
                       {"train": "test", "test": "test", "validation": "validation"}, hub_id="TIGER-Lab/MMLU-Pro",
                       seeded_test_size=2284, group_by="category"))
register_task(TaskSpec("synthetic", "number", _synthetic_record, {s: s for s in SYNTHETIC_SIZES},
                       generate=_synthetic_split, group_by="perturbation_type", cluster=_skeleton_cluster))

# The relations variants (advdistill.data.relations; issue 28.4, bench/preregistration.md): generated
# records like the synthetic task's; `curate`, `val`, `test` and `ood` hold one item per skeleton.
RELATIONS_SIZES = {"train": 5000, "curate": 5000, "val": 500, "test": 1000, "ood": 1000}


def _relations_task(variant: str) -> TaskSpec:
    def to_record(row: dict[str, Any], split: str, index: int) -> dict[str, Any]:
        return {**_synthetic_record(row, split, index), "task": variant}

    def generate(split: str, limit: int | None, seed: int) -> list[dict[str, Any]]:
        return relations.make_split(variant, split, limit if limit is not None else RELATIONS_SIZES[split], seed=seed)

    return TaskSpec(variant, "number", to_record, {s: s for s in RELATIONS_SIZES}, generate=generate,
                    cluster=_skeleton_cluster)


for _variant in relations.VARIANTS:
    register_task(_relations_task(_variant))
