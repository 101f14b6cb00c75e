"""SPEC §7 metrics."""

import pytest

from advdistill.evaluation.metrics import (
    accuracy,
    degeneracy,
    seq_rep_4,
    summarize_predictions,
    template_adherence,
    template_flags,
    verbosity,
)


def test_accuracy():
    assert accuracy([True, False, True, True]) == 0.75
    assert accuracy([]) == 0.0


def test_verbosity_means_and_ratio():
    v = verbosity([10, 20, 40, 60], [True, True, False, False])
    assert v == {"mean_tokens_correct": 15, "mean_tokens_incorrect": 50, "verbosity_ratio": pytest.approx(50 / 15)}
    assert verbosity([10], [True])["verbosity_ratio"] is None


def test_seq_rep_4_by_hand():
    assert seq_rep_4("a b c") == 0.0  # fewer than 4 words
    assert seq_rep_4("a b c d e") == 0.0  # 2 distinct 4-grams
    # "a b c d a b c d": 5 four-grams, 4 distinct -> 1 - 4/5
    assert seq_rep_4("a b c d a b c d") == pytest.approx(0.2)
    assert seq_rep_4("A B C D a b c d") == pytest.approx(0.2)  # lower-cased
    assert seq_rep_4("x " * 10) == pytest.approx(1 - 1 / 7)


def test_degeneracy_split():
    d = degeneracy(["a b c d a b c d", "a b c d e"], [False, True])
    assert d["degeneracy_incorrect"] == pytest.approx(20.0)
    assert d["degeneracy_correct"] == 0.0
    assert d["degeneracy"] == pytest.approx(10.0)


def test_template_adherence():
    responses = [
        "<think>x</think><answer>\\boxed{1}</answer>",
        "<think>x</think> 1",
        "<answer>\\boxed{2}</answer>",
        "\\boxed{3}",
    ]
    assert template_adherence(responses) == {"think": 0.5, "answer": 0.5, "boxed": 0.75, "all": 0.25}


def test_summarize_predictions_groups():
    rows = [
        {"response": "<think>a</think><answer>\\boxed{1}</answer>", "tokens": 5, "correct": True, "kind": "x"},
        {"response": "wrong", "tokens": 9, "correct": False, "kind": "y"},
    ]
    summary = summarize_predictions(rows, group_by="kind")
    assert summary["accuracy"] == 0.5 and summary["n"] == 2
    assert summary["by_kind"]["x"]["accuracy"] == 1.0
    assert summary["by_kind"]["y"]["mean_tokens_incorrect"] == 9


@pytest.mark.parametrize(
    "text, think, answer",
    [
        ("</answer> 5 <answer>", False, False),  # a closing tag before any opening one is no block
        ("</think> x <think> </answer><answer>\\boxed{5}", False, False),
        ("<think>a</think></answer><answer>\\boxed{5}</answer>", True, True),  # a later proper block counts
        ("<answer>\\boxed{5}", False, False),  # unclosed
        ("<think>a</think><answer>\\boxed{5}</answer>", True, True),
    ],
)
def test_template_blocks_need_the_closing_tag_after_the_opening_one(text, think, answer):
    flags = template_flags(text)
    assert (flags["think"], flags["answer"]) == (think, answer)
    assert flags["all"] == (think and answer and flags["boxed"])
