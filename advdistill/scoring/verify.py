"""Correctness, SPEC §3: is a response's extracted answer the reference?

- Multiple choice (mmlu_pro): the option letter equals the reference letter.
- GSM-PLUS "critical thinking" (reference None): correct iff there is no final answer, or the
  final answer says the question cannot be answered (`critical_thinking`).
- Math (gsm8k, gsm_plus, open_s1, open_rs, synthetic): two plain numbers are compared here, in
  this process, as math-verify would compare them (`numbers`: integers and fractions exactly,
  decimals by math-verify's 6-digit rounding); anything else is math-verify's verdict
  (`verify(parse(gold), parse(answer))`, gold first), computed in a worker process that is
  killed at the deadline (`math_verify_pool`).
- No extractable answer is incorrect (critical thinking aside), and so is a response truncated
  at the token limit, whatever it says (`judge`, the one place that rule is applied).

Never raises. Bounded in time whatever the input, in any thread or process: extraction and the
number path are linear in the text, and math-verify gets at most `math_verify_pool.TIME_LIMIT_S`
per response; a timeout counts as incorrect. No guard rejects answers by their shape (`6!`,
`\\binom{8}{3}`, `2^{10}\\cdot 3^{5}` are judged by math-verify like any other answer).
"""

from __future__ import annotations

from typing import NamedTuple

from advdistill.schema import TRUNCATED
from advdistill.scoring.critical_thinking import critical_thinking_correct
from advdistill.scoring.extract import extract_answer, normalize_choice
from advdistill.scoring.math_verify_pool import latex_answers_match
from advdistill.scoring.numbers import numbers_match, parse_number, read_number
from advdistill.tasks import TaskSpec, get_task

__all__ = ["Verdict", "answers_match", "is_correct", "judge", "parse_number"]


def _is_critical_thinking(reference: str | None, spec: TaskSpec) -> bool:
    # A task whose references may be missing also spells a missing one "None" (GSM-PLUS).
    return reference is None or (spec.reference_optional and str(reference).strip().lower() == "none")


def _choice_matches(answer: str, reference: str) -> bool:
    letter = normalize_choice(answer)
    return letter is not None and letter == reference.strip().upper()


def _math_matches(answer: str, reference: str) -> bool:
    if not answer.strip():
        return False
    gold, pred = read_number(reference), read_number(answer)
    if gold is not None and pred is not None:
        return numbers_match(gold, pred)
    return latex_answers_match(reference, answer)


def answers_match(answer: str | None, reference: str | None, task: str) -> bool:
    """Whether an extracted answer equals the reference, SPEC §3 (never raises)."""
    try:
        spec = get_task(task)
        if _is_critical_thinking(reference, spec):
            return critical_thinking_correct(answer)
        if answer is None:
            return False
        if spec.multiple_choice:
            return _choice_matches(str(answer), str(reference))
        return _math_matches(str(answer), str(reference))
    except Exception:  # noqa: BLE001 - a verifier must never raise
        return False


def is_correct(text: str, reference: str | None, task: str) -> bool:
    """SPEC §3: extract the answer from a response and compare it with the reference (for a
    response whose finish reason is known, `judge` also applies the truncation rule)."""
    return answers_match(extract_answer(text, task), reference, task)


class Verdict(NamedTuple):
    answer: str | None  # the final answer read from the response
    correct: bool


def judge(text: str, finish_reason: str, reference: str | None, task: str) -> Verdict:
    """A generated response's answer and correctness, SPEC §3: a response truncated at the token
    limit is incorrect whatever it says (and is not verified)."""
    answer = extract_answer(text, task)
    return Verdict(answer, finish_reason != TRUNCATED and answers_match(answer, reference, task))
