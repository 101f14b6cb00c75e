"""The synthetic task: determinism, disjoint splits, references the verifier accepts, skeletons."""

import hashlib
import json
import re

import pytest

from advdistill.data.synthetic import _BUCKETS, PERTURBATIONS, _bucket, arithmetic_drills, make_split
from advdistill.scoring import format_reward, is_correct


def test_make_split_is_deterministic_and_prefix_stable():
    a, b = make_split("train", 50, seed=3), make_split("train", 80, seed=3)
    assert a == b[:50]
    assert make_split("train", 50, seed=4) != a


def test_records_follow_the_spec_schema_with_unique_ids():
    for split in ("train", "val", "test", "ood"):
        records = make_split(split, 300)
        assert len({r["id"] for r in records}) == 300
        for r in records:
            assert set(r) == {"id", "task", "question", "reference", "choices", "meta"}
            assert r["task"] == "synthetic" and r["choices"] is None and r["id"].startswith(f"synthetic-{split}-")


def test_splits_are_disjoint():
    questions = {split: {r["question"] for r in make_split(split, 2000)} for split in ("train", "val", "test", "ood")}
    for a in questions:
        for b in questions:
            if a < b:
                assert not questions[a] & questions[b], (a, b)


def test_styles_change_the_solution_wording_never_the_problem():
    restate, terse = make_split("test", 200), make_split("test", 200, style="terse")
    for r, t in zip(restate, terse):
        assert (r["id"], r["question"], r["reference"]) == (t["id"], t["question"], t["reference"])
        assert is_correct(t["meta"]["solution"], t["reference"], "synthetic")
        # restating quotes each operation's sentence before computing; terse computes only
        assert r["meta"]["solution"].count(":") == r["meta"]["num_ops"] and ":" not in t["meta"]["solution"]


def test_restated_lines_quote_the_question():
    for r in make_split("test", 200):
        lines = r["meta"]["solution"].split("<think>\n")[1].split("\n</think>")[0].splitlines()
        for line in lines[1:]:
            assert line.split(":")[0] in r["question"], (line, r["question"])


def test_every_reference_solution_verifies_and_follows_the_template():
    for split in ("train", "val", "test", "ood"):
        for r in make_split(split, 400):
            solution = r["meta"]["solution"]
            assert format_reward(solution) == 1.0
            assert is_correct(solution, r["reference"], "synthetic")
            assert not is_correct(solution, str(int(r["reference"]) + 1), "synthetic")


def test_ood_covers_every_perturbation_type():
    records = make_split("ood", 50)
    assert {r["meta"]["perturbation_type"] for r in records} == set(PERTURBATIONS)
    assert all(r["meta"]["num_ops"] == 4 for r in records if r["meta"]["perturbation_type"] == "adding operation")


def test_unknown_split_is_rejected():
    with pytest.raises(ValueError, match="unknown synthetic split"):
        make_split("validation", 3)



def _fingerprint(records) -> str:
    rows = [(r["id"], r["question"], r["reference"], r["meta"]["solution"], r["meta"]["perturbation_type"],
             r["meta"]["num_ops"]) for r in records]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


def test_the_generated_problems_are_those_the_tiny_models_and_results_were_built_on():
    # Fingerprints taken before records named their skeleton: naming it drew nothing and changed
    # no question, reference or solution (the tiny models and every saved result rest on them).
    assert {split: _fingerprint(make_split(split, n)) for split, n in
            (("train", 2000), ("val", 500), ("test", 1000), ("ood", 1000))} == {
        "train": "78fd00336a8b8df6", "val": "7dd0665433f547aa", "test": "5af8a292ff03ee46", "ood": "f6f93cc394bab9b3"}
    assert _fingerprint(make_split("test", 300, seed=1, style="terse")) == "b320d528515a10b3"
    assert hashlib.sha256(json.dumps(arithmetic_drills(500)).encode()).hexdigest()[:16] == "67876c646703aa99"


SKELETON = re.compile(r"(?:(?P<tag>[a-z0-9]+):)?(?P<start>\d+)(?P<ops>(?:[-+*/]\d+)*)")
KINDS = {"+": "add", "-": "sub", "*": "mul", "/": "div"}


def test_each_record_names_the_skeleton_its_split_was_drawn_by():
    for split in ("train", "val", "test", "ood"):
        for r in make_split(split, 400):
            m = SKELETON.fullmatch(r["meta"]["skeleton"])
            ops = [(KINDS[sym], int(b)) for sym, b in re.findall(r"([-+*/])(\d+)", m["ops"])]
            # the skeleton is the one whose hash put the problem in its split ...
            assert _bucket((m["tag"] or "", int(m["start"]), tuple(ops))) in _BUCKETS[split]
            assert len(ops) == r["meta"]["num_ops"]
            # ... and it is the problem's computation
            value = int(m["start"])
            for kind, b in ops:
                value = {"add": value + b, "sub": value - b, "mul": value * b, "div": value // b}[kind]
            assert r["reference"] == str(int(m["start"]) if m["tag"] == "reversed" else value)
    tags = {r["meta"]["perturbation_type"]: SKELETON.fullmatch(r["meta"]["skeleton"])["tag"] for r in make_split("ood", 10)}
    assert tags["digit expansion"] == "x10" and tags["reversing operation"] == "reversed"
    assert tags["numerical substitution"] is None
