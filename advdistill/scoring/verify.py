"""Correctness, SPEC §3: is a response's extracted answer the reference?

- Multiple choice (mmlu_pro): the option letter equals the reference letter.
- GSM-PLUS "critical thinking" (reference None): correct iff there is no final answer, or the
  final answer says the question cannot be answered (`critical_thinking`).
- Math (gsm8k, gsm_plus, open_s1, open_rs, synthetic): two plain numbers are compared here, in
  this process, as math-verify would compare them (`numbers`: integers and fractions exactly,
  decimals by math-verify's 6-digit rounding); anything else is math-verify's verdict
  (`verify(parse(gold), parse(answer))`, gold first), computed in a worker process that is
  killed at the deadline (`math_verify_pool`).
- Exact (`answer: exact`): the answer equals the reference once both are normalised (`normalise`:
  Unicode NFKC, case folded, `\\text{}` unwrapped, whitespace collapsed, a trailing period dropped).
- Regex (`answer: regex`): the answer matches the task's pattern in full (`{reference}` in it
  stands for the escaped reference; without a pattern the reference is the pattern).
- Custom (`answer: custom`): the task's own verifier, `module:function(extracted, reference,
  record) -> bool`, run in a worker process killed at its time limit (`custom_verifier`).
- No extractable answer is incorrect (critical thinking aside), and so is a response truncated
  at the token limit, whatever it says (`judge`, the one place that rule is applied).

Never raises. Bounded in time whatever the input, in any thread or process: extraction and the
number path are linear in the text, and math-verify gets at most `math_verify_pool.TIME_LIMIT_S`
per response; a timeout counts as incorrect. No guard rejects answers by their shape (`6!`,
`\\binom{8}{3}`, `2^{10}\\cdot 3^{5}` are judged by math-verify like any other answer).
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from typing import Any, Mapping, NamedTuple

from advdistill.schema import TRUNCATED, Record, columns
from advdistill.scoring.critical_thinking import critical_thinking_correct
from advdistill.scoring.custom_verifier import custom_verdict
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


_TEXT = re.compile(r"\\text\s*\{([^{}]*)\}")
_SPACES = re.compile(r"\s+")
_RECORD_FIELDS = columns(Record)  # what a task's own verifier gets of an item
MAX_PATTERN_INPUT = 1_000  # characters of an answer a pattern is matched against (longer: no match)


def normalise(text: str) -> str:
    """An answer as `answer: exact` compares it: NFKC, case folded, `\\text{}` unwrapped,
    whitespace collapsed, a trailing period dropped."""
    text = _TEXT.sub(r"\1", unicodedata.normalize("NFKC", text))
    return _SPACES.sub(" ", text).strip().rstrip(".").strip().casefold()


@lru_cache(maxsize=256)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _pattern_matches(answer: str, reference: str | None, pattern: str | None) -> bool:
    if len(answer) > MAX_PATTERN_INPUT:
        return False
    if pattern is None:
        return reference is not None and _compiled(reference).fullmatch(answer.strip()) is not None
    source = pattern.replace("{reference}", re.escape(reference or ""))
    return _compiled(source).fullmatch(answer.strip()) is not None


def answers_match(answer: str | None, reference: str | None, task: str,
                  record: Mapping[str, Any] | None = None) -> bool:
    """Whether an extracted answer equals the reference, SPEC §3 (never raises). `record` (the
    item, SPEC §8 fields) is what a task's own verifier gets besides the two."""
    try:
        spec = get_task(task)
        if spec.answer == "custom":
            if answer is None:
                return False
            item = {key: (record or {"task": task, "reference": reference}).get(key) for key in _RECORD_FIELDS}
            return custom_verdict(spec.verifier or "", str(answer), reference, item, spec.verifier_time_limit_s)
        if _is_critical_thinking(reference, spec):
            return critical_thinking_correct(answer)
        if answer is None:
            return False
        if spec.multiple_choice:
            return _choice_matches(str(answer), str(reference))
        if spec.answer == "exact":
            return normalise(str(answer)) == normalise(str(reference))
        if spec.answer == "regex":
            return _pattern_matches(str(answer), reference, spec.pattern)
        return _math_matches(str(answer), str(reference))
    except Exception:  # noqa: BLE001 - a verifier must never raise
        return False


def is_correct(text: str, reference: str | None, task: str, record: Mapping[str, Any] | None = None) -> bool:
    """SPEC §3: extract the answer from a response and compare it with the reference (for a
    response whose finish reason is known, `judge` also applies the truncation rule)."""
    return answers_match(extract_answer(text, task), reference, task, record)


class Verdict(NamedTuple):
    answer: str | None  # the final answer read from the response
    correct: bool


def judge(text: str, finish_reason: str, reference: str | None, task: str,
          record: Mapping[str, Any] | None = None) -> Verdict:
    """A generated response's answer and correctness, SPEC §3: a response truncated at the token
    limit is incorrect whatever it says (and is not verified)."""
    answer = extract_answer(text, task)
    return Verdict(answer, finish_reason != TRUNCATED and answers_match(answer, reference, task, record))
