"""SPEC §8 loaders on the real rows in ../shared/data and on local files with bad rows."""

import json

import pytest

from advdistill.config import DatasetConfig
from advdistill.data.loaders import load_records
from advdistill.scoring import is_correct
from advdistill.prompts import template_response
from advdistill.schema import Record, columns
from advdistill.tasks import OPTION_LETTERS


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_gsm8k_from_local_file(shared_data):
    result = load_records(DatasetConfig(name="gsm8k", split="test", path=str(shared_data / "gsm8k" / "test.jsonl")))
    assert len(result.records) == 1319 and not result.quarantined
    first = result.records[0]
    assert tuple(first) == columns(Record)
    assert first["id"] == "gsm8k-test-00000" and first["reference"] == "18" and first["task"] == "gsm8k"
    assert len({r["id"] for r in result.records}) == 1319
    big = [r for r in result.records if "," in r["meta"]["solution"].split("####")[-1]]
    assert all("," not in r["reference"] for r in big)


def test_gsm_plus_keeps_perturbation_type_and_none_reference(shared_data):
    path = str(shared_data / "samples" / "gsm_plus_testmini.sample.jsonl")
    records = load_records(DatasetConfig(name="gsm_plus", split="testmini", path=path)).records
    assert len(records) == 40
    critical = [r for r in records if r["meta"]["perturbation_type"] == "critical thinking"]
    assert len(critical) == 5 and all(r["reference"] is None for r in critical)
    assert all(is_correct(template_response("x", r["reference"] or "None"), r["reference"], "gsm_plus") for r in records)


def test_mmlu_pro_seeded_split_is_disjoint_and_reproducible(shared_data):
    path = str(shared_data / "samples" / "mmlu_pro_test.sample.jsonl")
    train = load_records(DatasetConfig(name="mmlu_pro", split="train", path=path, test_size=12, seed=1)).records
    test = load_records(DatasetConfig(name="mmlu_pro", split="test", path=path, test_size=12, seed=1)).records
    again = load_records(DatasetConfig(name="mmlu_pro", split="test", path=path, test_size=12, seed=1)).records
    other = load_records(DatasetConfig(name="mmlu_pro", split="test", path=path, test_size=12, seed=2)).records
    assert len(test) == 12 and len(train) == 30 and not {r["id"] for r in train} & {r["id"] for r in test}
    assert [r["id"] for r in test] == [r["id"] for r in again] != [r["id"] for r in other]
    r = test[0]
    assert r["choices"] and r["reference"] in OPTION_LETTERS and r["meta"]["category"]


def test_open_s1_and_open_rs_hard_only(tmp_path):
    rows = [{"problem": f"p{i}", "solution": "s", "answer": f"\\frac{{{i}}}{{2}}", "source": "x"} for i in range(20)]
    s1 = write_jsonl(tmp_path / "s1.jsonl", rows)
    train = load_records(DatasetConfig(name="open_s1", split="train", path=s1, test_size=5)).records
    test = load_records(DatasetConfig(name="open_s1", split="test", path=s1, test_size=5)).records
    assert (len(train), len(test)) == (15, 5)
    rs_rows = [{"problem": f"q{i}", "solution": "s", "answer": "1", "level": lvl} for i, lvl in enumerate(["easy", "Hard", "medium", "hard"])]
    rs = load_records(DatasetConfig(name="open_rs", split="test", path=write_jsonl(tmp_path / "rs.jsonl", rs_rows))).records
    assert [r["question"] for r in rs] == ["q1", "q3"]


def test_bad_rows_are_quarantined_with_reasons(tmp_path):
    rows = [
        {"question": "ok?", "answer": "x\n#### 4"},
        {"question": "", "answer": "#### 1"},
        {"question": "no hashes", "answer": "42"},
        {"question": "words", "answer": "#### many"},
        "{not json",
        ["a", "list"],
        {"answer": "#### 2"},
        {"question": "ok too", "answer": "#### 1,000"},
    ]
    result = load_records(DatasetConfig(name="gsm8k", split="test", path=write_jsonl(tmp_path / "bad.jsonl", rows)))
    assert [r["reference"] for r in result.records] == ["4", "1000"]
    reasons = " | ".join(q["reason"] for q in result.quarantined)
    assert len(result.quarantined) == 6
    for needle in ("empty field 'question'", "no '#### answer'", "not a number", "not JSON", "not a JSON object", "missing"):
        assert needle in reasons


def test_duplicate_ids_are_quarantined(tmp_path):
    rows = [{"question_id": 7, "question": "q", "options": ["a", "b"], "answer": "A"},
            {"question_id": 7, "question": "q again", "options": ["a", "b"], "answer": "B"},
            {"question_id": 8, "question": "q", "options": ["a", "b"], "answer": "Z"}]
    result = load_records(DatasetConfig(name="mmlu_pro", split="validation", path=write_jsonl(tmp_path / "m.jsonl", rows)))
    assert [r["id"] for r in result.records] == ["mmlu_pro-7"]
    assert {q["reason"].split(" ")[0] for q in result.quarantined} == {"duplicate", "unparsable"}


def test_synthetic_and_errors():
    assert len(load_records(DatasetConfig(name="synthetic", split="ood", limit=7)).records) == 7
    with pytest.raises(ValueError, match="splits"):
        load_records(DatasetConfig(name="gsm8k", split="dev", path="x.jsonl"))
    with pytest.raises(FileNotFoundError):
        load_records(DatasetConfig(name="gsm8k", split="test", path="/nonexistent.jsonl"))
