"""The synthetic task: determinism, disjoint splits, references the verifier accepts, skeletons."""

import hashlib
import json
import re

import pytest

from advdistill.data.synthetic import (
    _BUCKETS,
    BUILD_DRILLS,
    BUILD_TRAIN_PROBLEMS,
    PERTURBATIONS,
    _bucket,
    arithmetic_drills,
    build_skeletons,
    make_split,
    skeleton_id,
)
from advdistill.scoring import format_reward, is_correct


def test_make_split_is_deterministic_and_prefix_stable():
    a, b = make_split("train", 50, seed=3), make_split("train", 80, seed=3)
    assert a == b[:50]
    assert make_split("train", 50, seed=4) != a


def test_records_follow_the_spec_schema_with_unique_ids():
    for split in ("train", "curate", "val", "test", "ood"):
        records = make_split(split, 300)
        assert len({r["id"] for r in records}) == 300
        for r in records:
            assert set(r) == {"id", "task", "question", "reference", "choices", "meta"}
            assert r["task"] == "synthetic" and r["choices"] is None and r["id"].startswith(f"synthetic-{split}-")


def test_splits_are_disjoint():
    questions = {split: {r["question"] for r in make_split(split, 2000)}
                 for split in ("train", "curate", "val", "test", "ood")}
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
    for split in ("train", "curate", "val", "test", "ood"):
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
    for split in ("train", "curate", "val", "test", "ood"):
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


def _build_corpus():
    """What tools/build_tiny_models.py trains both embedded models on, rebuilt from its own calls:
    the first BUILD_TRAIN_PROBLEMS train records and BUILD_DRILLS drills (questions, skeletons)."""
    records = make_split("train", BUILD_TRAIN_PROBLEMS, seed=0)
    drills = arithmetic_drills(BUILD_DRILLS, seed=0)
    questions = {r["question"] for r in records} | {q for q, _ in drills}
    skeletons = {r["meta"]["skeleton"] for r in records}
    for question, _ in drills:  # "What is 12 + 5?" is the one-step skeleton 12+5
        a, sym, b = re.fullmatch(r"What is (\d+) ([-+*/]) (\d+)\?", question).groups()
        skeletons.add(f"{a}{sym}{b}")
    return questions, skeletons


def test_curation_prompts_are_neither_questions_nor_skeletons_of_the_models_build_corpus():
    from advdistill.config import REPO, load_config
    from advdistill.tasks import SYNTHETIC_SIZES

    questions, skeletons = _build_corpus()
    assert {skeleton_id(s) for s in build_skeletons()} == skeletons
    curate = make_split("curate", SYNTHETIC_SIZES["curate"])
    assert not {r["question"] for r in curate} & questions
    assert not {r["meta"]["skeleton"] for r in curate} & skeletons
    assert {r["meta"]["num_ops"] for r in curate} == {2, 3}  # every 1-step train skeleton was built on
    # the demo curates from that split, within its size, and the builder's corpus is the one above
    cfg = load_config(REPO / "configs" / "tiny.yaml")
    assert (cfg.curate.dataset.name, cfg.curate.dataset.split) == ("synthetic", "curate")
    assert cfg.curate.dataset.limit <= SYNTHETIC_SIZES["curate"]
    builder = (REPO / "tools" / "build_tiny_models.py").read_text()
    assert "default=BUILD_TRAIN_PROBLEMS" in builder and "default=BUILD_DRILLS" in builder
    assert 'make_split("train", args.train_problems, seed=0' in builder
    assert "arithmetic_drills(args.drills, seed=0" in builder


def test_curate_split_is_stable():
    # the demo's and bench/fidelity.py's saved results rest on these prompts
    assert _fingerprint(make_split("curate", 640)) == "586362eb92af177b"
