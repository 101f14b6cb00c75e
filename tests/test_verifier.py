"""SPEC §3: extraction and correctness, on real data and adversarial text."""

import re
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from advdistill.prompts import template_response
from advdistill.scoring import composite_reward, extract_answer, format_reward, is_correct
from advdistill.scoring import math_verify_pool
from advdistill.tasks import OPTION_LETTERS

from conftest import read_jsonl


@pytest.fixture(scope="module", autouse=True)
def _warm_math_verify():
    """A process's first LaTeX answer starts its math-verify workers (about a second, once);
    that start-up is not part of a response's time, which the tests below bound."""
    math_verify_pool.warm_up()


def gsm8k_reference(answer_field: str) -> str:
    return answer_field.split("####")[-1].strip().replace(",", "")


def changed(number: str) -> str:
    """A different number: add one to the last digit run (keeps decimals and signs)."""
    m = list(re.finditer(r"\d+", number))[-1]
    return number[: m.start()] + str(int(m.group()) + 1) + number[m.end() :]


def test_every_gsm8k_test_reference_verifies(shared_data):
    rows = read_jsonl(shared_data / "gsm8k" / "test.jsonl")
    assert len(rows) == 1319
    for row in rows:
        ref = gsm8k_reference(row["answer"])
        assert is_correct(template_response("steps", ref), ref, "gsm8k"), ref
        assert not is_correct(template_response("steps", changed(ref)), ref, "gsm8k"), ref


def test_gsm_plus_samples_verify(shared_data):
    rows = read_jsonl(shared_data / "samples" / "gsm_plus_testmini.sample.jsonl")
    for row in rows:
        if row["perturbation_type"] == "critical thinking":
            assert is_correct(template_response("cannot be answered", "None"), None, "gsm_plus")
            assert not is_correct(template_response("guess", "12"), None, "gsm_plus")
            continue
        ref = row["answer"]
        assert is_correct(template_response("steps", ref), ref, "gsm_plus"), ref
        assert not is_correct(template_response("steps", changed(ref)), ref, "gsm_plus"), ref


def test_mmlu_pro_samples_verify(shared_data):
    rows = read_jsonl(shared_data / "samples" / "mmlu_pro_test.sample.jsonl")
    for row in rows:
        ref = row["answer"]
        wrong = OPTION_LETTERS[(OPTION_LETTERS.index(ref) + 1) % len(row["options"])]
        assert is_correct(template_response("reasoning", ref), ref, "mmlu_pro")
        assert not is_correct(template_response("reasoning", wrong), ref, "mmlu_pro")


@pytest.mark.parametrize(
    "text, task, expected",
    [
        ("<answer>\\boxed{12}</answer>", "gsm8k", "12"),
        ("\\boxed{1} then <answer>so \\boxed{2}</answer> and \\boxed{3}", "gsm8k", "2"),  # inside <answer> wins
        ("\\boxed{1} text \\boxed{\\frac{3}{4}}", "open_s1", "\\frac{3}{4}"),  # last boxed, nested braces
        ("<answer>no box</answer> \\boxed{5}", "gsm8k", "5"),
        ("so the total is\n#### 1,234", "gsm8k", "1,234"),
        ("The answer is 42 apples.", "gsm8k", "42"),
        ("I think 3 then 4 then 17.5", "gsm8k", "17.5"),
        ("nothing here", "gsm8k", None),
        ("\\boxed{unclosed", "gsm8k", None),
        ("<answer>\\boxed{\\text{(C)}}</answer>", "mmlu_pro", "C"),
        ("<answer>\\boxed{**B**}</answer>", "mmlu_pro", "B"),
        ("so the answer is (D).", "mmlu_pro", "D"),
        ("Answer: F", "mmlu_pro", "F"),
        ("Between A and J I pick J", "mmlu_pro", "J"),
        ("", "gsm8k", None),
    ],
)
def test_extract_answer(text, task, expected):
    assert extract_answer(text, task) == expected


@pytest.mark.parametrize(
    "answer, reference, task, expected",
    [
        ("\\$1,200", "1200", "gsm8k", True),
        ("25\\%", "25", "gsm8k", True),
        ("18 dollars", "18", "gsm8k", True),
        ("\\text{18 apples}", "18", "gsm8k", True),
        ("0.50", "1/2", "gsm8k", True),
        ("\\frac{1}{2}", "0.5", "open_s1", True),
        ("x^2 + 1", "1 + x^2", "open_s1", True),
        ("\\sqrt{2}/2", "\\frac{\\sqrt{2}}{2}", "open_rs", True),
        ("19", "18", "gsm8k", False),
        ("none", None, "gsm_plus", True),
        ("3", None, "gsm_plus", False),
        ("(B) Mercury", "B", "mmlu_pro", True),
        ("Mercury", "B", "mmlu_pro", False),
    ],
)
def test_is_correct(answer, reference, task, expected):
    assert is_correct(f"<think>r</think><answer>\\boxed{{{answer}}}</answer>", reference, task) is expected


def test_missing_answer_is_incorrect():
    assert not is_correct("I do not know", "7", "gsm8k")
    assert not is_correct("", "A", "mmlu_pro")


ADVERSARIAL = [
    "\\boxed{" * 20000,
    "}" * 50000 + "\\boxed{1}",
    "\\boxed{" + "{" * 30000 + "1" + "}" * 29999,
    "<answer>" * 10000 + "\\boxed{\\boxed{\\boxed{7}}}",
    "9" * 100000,
    "1," * 50000,
    "answer is " * 10000,
    "\\boxed{9^{9^{9^{9^{9^{9}}}}}}",
    "\\boxed{" + "(" * 500 + "1" + ")" * 500 + "}",
    "\\boxed{\\frac{1}{0}}",
    "\\boxed{" + "x+" * 2000 + "1}",
    "<think>" + "a " * 50000 + "</think><answer>\\boxed{1}</answer>",
]


@pytest.mark.parametrize("text", ADVERSARIAL, ids=range(len(ADVERSARIAL)))
@pytest.mark.parametrize("task", ["gsm8k", "open_s1", "mmlu_pro", "gsm_plus"])
def test_adversarial_inputs_are_fast_and_never_raise(text, task):
    start = time.perf_counter()
    extract_answer(text, task)
    is_correct(text, "1", task)
    is_correct(text, None, task)
    format_reward(text)
    composite_reward(text, 100, False)
    assert time.perf_counter() - start < 1.0


_TEMPLATE_PIECES = st.sampled_from(
    ["<think>", "</think>", "<answer>", "</answer>", "\\boxed{", "{", "}", "\\frac", "^", "1", "-", ".", ",", "$", "%", " ", "\n", "A", "answer is ", "####"]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=2000), st.lists(_TEMPLATE_PIECES, max_size=400).map("".join)), st.sampled_from(["gsm8k", "open_s1", "mmlu_pro", "gsm_plus", "synthetic", "open_rs"]))
def test_verifier_and_rewards_never_raise_on_arbitrary_text(text, task):
    start = time.perf_counter()
    answer = extract_answer(text, task)
    assert answer is None or isinstance(answer, str)
    assert isinstance(is_correct(text, "12", task), bool)
    assert format_reward(text) in (0.0, 1.0)
    assert isinstance(composite_reward(text, len(text), False), float)
    assert time.perf_counter() - start < 1.0
