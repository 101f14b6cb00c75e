"""SPEC §3: GSM-PLUS "critical thinking" items (reference None), as GSM-PLUS's official scorer has
them: correct iff the response says the question cannot be answered, or gives no final answer
at all; a final number is incorrect."""

from __future__ import annotations

import pytest

from advdistill.prompts import template_response
from advdistill.scoring import answers_match, extract_answer, is_correct
from advdistill.scoring.critical_thinking import says_unanswerable

CORRECT = [
    "Tom buys 3 shirts for some price. So the answer is none",  # the example
    "3 apples are bought, so the answer is: not enough information.",
    "The answer is that it cannot be determined.",
    "#### None",
    template_response("the price is missing", "None"),
    template_response("the price is missing", "\\text{None}"),
    template_response("the price is missing", "\\text{Not enough information}"),
    template_response("the price is missing", "\\text{Cannot be determined}"),
    template_response("x", "\\emptyset"),
    "She buys 3 apples at an unknown price. The problem does not specify the price.",
    "He has 5 boxes, but we don\u2019t know how many are in each, so we cannot calculate the total.",
    "I cannot determine the answer because there is not enough information.",
    "There is no way to say without the price.",  # no final answer at all
    "",
]

INCORRECT = [
    template_response("guess", "12"),
    "The answer is 12.",
    "#### 12",
    "The problem does not specify the price, so assume $2 each: the total is 12.",  # hedge, then a number
    "Nonetheless, the total is 12.",  # "nonetheless" is not "none"
    template_response("the price is missing", "x + 1"),  # a final answer that is not "cannot be answered"
]


@pytest.mark.parametrize("text", CORRECT)
def test_saying_it_cannot_be_answered_or_not_answering_is_correct(text):
    assert is_correct(text, None, "gsm_plus")
    assert is_correct(text, "None", "gsm_plus")  # the dataset's spelling of the missing reference


@pytest.mark.parametrize("text", INCORRECT)
def test_a_final_number_or_other_answer_is_incorrect(text):
    assert not is_correct(text, None, "gsm_plus")


@pytest.mark.parametrize("text", CORRECT + INCORRECT)
def test_the_evaluator_path_agrees(text):
    """The evaluator calls answers_match(extract_answer(...)): same verdict as is_correct."""
    assert answers_match(extract_answer(text, "gsm_plus"), None, "gsm_plus") is is_correct(text, None, "gsm_plus")


@pytest.mark.parametrize(
    "phrase",
    ["not enough information", "does not provide enough information", "does not specify", "doesn't specify",
     "did not mention", "not provided", "can't determine", "cannot be calculated", "do not know", "don't have enough",
     "missing necessary information", "none", "None", "N/A", "unanswerable"],
)
def test_gsm_plus_phrases(phrase):
    assert says_unanswerable(phrase)


@pytest.mark.parametrize("text", ["nonetheless", "12", "the total is 12", "specifically", "known"])
def test_not_phrases(text):
    assert not says_unanswerable(text)


def test_gsm8k_free_form_extraction_is_unchanged_by_the_phrases():
    # "none" in prose is not a statement that the question cannot be answered
    assert extract_answer("5 - 5 = 0, so there are none left.", "gsm8k") == "0"
    assert extract_answer("The answer is 42 apples.", "gsm8k") == "42"
    assert is_correct("5 - 5 = 0, so there are none left.", "0", "gsm8k")
