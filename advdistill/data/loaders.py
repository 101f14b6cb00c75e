"""Dataset loaders, SPEC §8: every dataset becomes the same record.

    {"id", "task", "question", "reference", "choices", "meta"}

Each loads from its hub id with `datasets.load_dataset`, or from a local JSON-lines/Parquet file
with the hub's fields (clusters without hub access, tests). Rows that cannot become a record
(missing or empty fields, an unparsable reference, a duplicate id, a line that is not JSON) never
stop a run: they are returned as quarantined, each with its reason.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from advdistill.config import DatasetConfig
from advdistill.data import synthetic
from advdistill.scoring.verify import parse_number


class BadRow(ValueError):
    """A raw row that cannot become a record; the message is the quarantine reason."""


@dataclass
class LoadResult:
    records: list[dict[str, Any]]
    quarantined: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class DatasetSpec:
    hub_id: str
    hub_config: str | None
    # our split name -> the hub split it is read from
    hub_splits: dict[str, str]
    to_record: Callable[[dict[str, Any], str, int], dict[str, Any]]
    # seeded train/test split of one hub split where the hub has none: default test size
    seeded_test_size: int | None = None
    # field that groups evaluation results (GSM-PLUS perturbation type, MMLU-Pro category)
    group_by: str | None = None


def _text(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise BadRow(f"missing or empty field '{key}'")
    if not isinstance(value, (str, int, float)):
        raise BadRow(f"field '{key}' is not text")
    return str(value).strip()


def _math_reference(value: str) -> str:
    value = value.strip()
    if not value:
        raise BadRow("empty reference")
    return value


def _gsm8k(row: dict[str, Any], split: str, index: int) -> dict[str, Any]:
    question, answer = _text(row, "question"), _text(row, "answer")
    if "####" not in answer:
        raise BadRow("unparsable reference: no '#### answer' line")
    reference = answer.split("####")[-1].strip().replace(",", "")
    if parse_number(reference) is None:
        raise BadRow(f"unparsable reference: {reference!r} is not a number")
    return {
        "id": f"gsm8k-{split}-{index:05d}",
        "task": "gsm8k",
        "question": question,
        "reference": reference,
        "choices": None,
        "meta": {"solution": answer},
    }


def _gsm_plus(row: dict[str, Any], split: str, index: int) -> dict[str, Any]:
    question, kind = _text(row, "question"), _text(row, "perturbation_type")
    raw = row.get("answer")
    if raw is None or str(raw).strip() == "":
        raise BadRow("missing or empty field 'answer'")
    raw = str(raw).strip().replace(",", "")
    # "critical thinking" items have no answer: the model should say so (SPEC §3).
    reference = None if raw.lower() == "none" else raw
    if reference is not None and parse_number(reference) is None:
        raise BadRow(f"unparsable reference: {raw!r}")
    return {
        "id": f"gsm_plus-{split}-{index:05d}",
        "task": "gsm_plus",
        "question": question,
        "reference": reference,
        "choices": None,
        "meta": {"perturbation_type": kind, "seed_question": row.get("seed_question")},
    }


def _open_math(task: str) -> Callable[[dict[str, Any], str, int], dict[str, Any]]:
    def convert(row: dict[str, Any], split: str, index: int) -> dict[str, Any]:
        return {
            "id": f"{task}-{index:05d}",  # index in the hub split: stable across our splits
            "task": task,
            "question": _text(row, "problem"),
            "reference": _math_reference(_text(row, "answer")),
            "choices": None,
            "meta": {"level": None if row.get("level") is None else str(row["level"]), "source": row.get("source")},
        }

    return convert


def _mmlu_pro(row: dict[str, Any], split: str, index: int) -> dict[str, Any]:
    question = _text(row, "question")
    options = row.get("options")
    if not isinstance(options, (list, tuple)) or not options or len(options) > 10:
        raise BadRow("field 'options' must be a list of 1 to 10 options")
    options = [str(o) for o in options]
    answer = _text(row, "answer").upper()
    if len(answer) != 1 or answer not in "ABCDEFGHIJ"[: len(options)]:
        raise BadRow(f"unparsable reference: answer {answer!r} is not one of the {len(options)} option letters")
    qid = row.get("question_id", index)
    return {
        "id": f"mmlu_pro-{qid}",
        "task": "mmlu_pro",
        "question": question,
        "reference": answer,
        "choices": options,
        "meta": {"category": row.get("category"), "src": row.get("src")},
    }


DATASETS: dict[str, DatasetSpec] = {
    "gsm8k": DatasetSpec("openai/gsm8k", "main", {"train": "train", "test": "test"}, _gsm8k),
    "gsm_plus": DatasetSpec("qintongli/GSM-Plus", None, {"testmini": "testmini", "test": "test"}, _gsm_plus,
                            group_by="perturbation_type"),
    "open_s1": DatasetSpec("knoveleng/open-s1", None, {"train": "train", "test": "train"}, _open_math("open_s1"),
                           seeded_test_size=553),
    # OOD set: the hard problems of open-rs' only split (see `hard_levels`).
    "open_rs": DatasetSpec("knoveleng/open-rs", None, {"test": "train"}, _open_math("open_rs"), group_by="level"),
    "mmlu_pro": DatasetSpec("TIGER-Lab/MMLU-Pro", None, {"train": "test", "test": "test", "validation": "validation"},
                            _mmlu_pro, seeded_test_size=2284, group_by="category"),
}
SYNTHETIC_SIZES = {"train": 5000, "val": 500, "test": 1000, "ood": 1000}
# open-rs levels counted as "hard" (case-insensitive); the paper evaluates 850 of them.
OPEN_RS_HARD_LEVELS = ("hard",)


def group_field(name: str) -> str | None:
    """The meta field evaluation results are broken down by, for a dataset."""
    if name == "synthetic":
        return "perturbation_type"
    return DATASETS[name].group_by if name in DATASETS else None


def _read_local(path: Path, quarantined: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    if not path.is_file():
        raise FileNotFoundError(f"dataset file not found: {path}")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        yield from pq.read_table(path).to_pylist()
        return
    with path.open() as handle:
        for n, line in enumerate(handle):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                quarantined.append({"line": n + 1, "reason": f"not JSON: {err.msg}", "row": line[:200]})
                continue
            if not isinstance(row, dict):
                quarantined.append({"line": n + 1, "reason": "not a JSON object", "row": line[:200]})
                continue
            yield row


def _read_hub(spec: DatasetSpec, hub_split: str) -> Iterator[dict[str, Any]]:
    from datasets import load_dataset

    ds = load_dataset(spec.hub_id, spec.hub_config, split=hub_split)
    yield from ds


def load_records(cfg: DatasetConfig) -> LoadResult:
    """The records of one dataset split, SPEC §8, and the rows quarantined on the way."""
    if cfg.name == "synthetic":
        if cfg.split not in synthetic.SPLITS:
            raise ValueError(f"synthetic has splits {synthetic.SPLITS}, not {cfg.split!r}")
        n = cfg.limit if cfg.limit is not None else SYNTHETIC_SIZES[cfg.split]
        return LoadResult(synthetic.make_split(cfg.split, n, seed=cfg.seed))
    spec = DATASETS[cfg.name]
    if cfg.split not in spec.hub_splits:
        raise ValueError(f"{cfg.name} has splits {sorted(spec.hub_splits)}, not {cfg.split!r}")
    quarantined: list[dict[str, Any]] = []
    rows = _read_local(Path(cfg.path), quarantined) if cfg.path else _read_hub(spec, spec.hub_splits[cfg.split])

    records, seen = [], set()
    for index, row in enumerate(rows):
        try:
            record = spec.to_record(row, cfg.split, index)
        except BadRow as err:
            quarantined.append({"index": index, "reason": str(err), "row": _excerpt(row)})
            continue
        if record["id"] in seen:
            quarantined.append({"index": index, "reason": f"duplicate id {record['id']}", "row": _excerpt(row)})
            continue
        seen.add(record["id"])
        records.append(record)

    if cfg.name == "open_rs":
        hard = {level.lower() for level in OPEN_RS_HARD_LEVELS}
        records = [r for r in records if (r["meta"]["level"] or "").strip().lower() in hard]
    if spec.seeded_test_size is not None and cfg.split in ("train", "test"):
        records = _seeded_split(records, cfg.split, cfg.test_size or spec.seeded_test_size, cfg.seed)
    if cfg.limit is not None:
        records = records[: cfg.limit]
    for q in quarantined:
        q["dataset"] = cfg.name
    return LoadResult(records, quarantined)


def _seeded_split(records: list[dict[str, Any]], split: str, test_size: int, seed: int) -> list[dict[str, Any]]:
    """A reproducible train/test partition of one hub split (by a seeded shuffle of ids)."""
    ids = sorted(r["id"] for r in records)
    random.Random(seed).shuffle(ids)
    test_ids = set(ids[: min(test_size, len(ids))])
    keep_test = split == "test"
    return [r for r in records if (r["id"] in test_ids) == keep_test]


def _excerpt(row: Any, limit: int = 300) -> str:
    text = json.dumps(row, default=str)
    return text if len(text) <= limit else text[:limit] + "…"
