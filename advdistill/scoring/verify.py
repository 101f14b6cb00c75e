"""Correctness, SPEC §3.

Math: a fast exact path for plain numbers (strip `,`, `$`, `%`, units; compare as rationals),
else math-verify (`verify(gold, answer)`, gold first). GSM-PLUS "critical thinking" items have
reference None: correct iff the answer is None/"none". Multiple choice: the option letter equals
the reference letter. Never raises; bounded in time whatever the input.
"""

from __future__ import annotations

import logging
import re
import signal
import threading
from contextlib import contextmanager
from fractions import Fraction
from functools import lru_cache
from typing import Iterator

from advdistill.scoring.extract import MULTIPLE_CHOICE_TASKS, extract_answer, normalize_choice

# math-verify (sympy) only sees short answers: anything longer is not a final value, and sympy
# time grows with the input. Towers of powers and factorials can explode in few characters.
_MATH_VERIFY_MAX_CHARS = 120
_MATH_VERIFY_SECONDS = 0.5
_EXPLOSIVE = re.compile(r"(\^.*){3,}|!|\\binom|\\int|\\sum|\\prod")


class _DropTimeoutNotice(logging.Filter):
    """math-verify warns once that its own timeout is off; ours (`_time_limit`) is on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_DropTimeoutNotice())

_WRAPPERS = re.compile(r"\\(?:text|textbf|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")
_FRAC = re.compile(r"^(-?)\\[dt]?frac\s*\{\s*(-?\d+)\s*\}\s*\{\s*(\d+)\s*\}$")
_PLAIN = re.compile(r"^([-+]?)\s*(\d+(?:\.\d*)?|\.\d+)\s*(?:/\s*(\d+))?\s*(?:[a-zA-Z][a-zA-Z .]*)?$")
_NOISE = ("\\!", "\\,", "\\;", "\\ ", "\\$", "$", "\\%", "%", "^\\circ", "^{\\circ}", "\\left", "\\right")


def parse_number(text: str) -> Fraction | None:
    """A plain number (with commas, $, %, trailing units, a/b or \\frac{a}{b}) as a Fraction."""
    s = _WRAPPERS.sub(r"\1", text.strip())
    for noise in _NOISE:
        s = s.replace(noise, "")
    s = s.replace(",", "").strip().rstrip(".").strip()
    if not s or len(s) > 64:
        return None
    m = _FRAC.match(s)
    if m:
        sign, num, den = m.groups()
        if int(den) == 0:
            return None
        value = Fraction(int(num), int(den))
        return -value if sign else value
    m = _PLAIN.match(s)
    if not m:
        return None
    sign, number, den = m.groups()
    try:
        value = Fraction(number)
        if den is not None:
            if int(den) == 0:
                return None
            value /= int(den)
    except (ValueError, ZeroDivisionError):
        return None
    return -value if sign == "-" else value


class _Timeout(Exception):
    pass


@contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """A sub-second wall-clock limit where signals work (the main thread); a no-op elsewhere,
    where the input-size and explosive-pattern guards bound the work instead."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum, frame):  # noqa: ARG001
        raise _Timeout

    previous = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@lru_cache(maxsize=1)
def _warm_up_math_verify() -> None:
    """The first parse builds math-verify's LaTeX parser (~1 s); do it once outside the limit
    so the first real answer is not timed out for it."""
    from math_verify import parse, verify

    verify(parse("\\boxed{x^2+1}", parsing_timeout=None), parse("\\boxed{1+x^2}", parsing_timeout=None), timeout_seconds=None)


def _math_verify_equal(answer: str, reference: str) -> bool:
    if len(answer) > _MATH_VERIFY_MAX_CHARS or len(reference) > _MATH_VERIFY_MAX_CHARS:
        return False
    if _EXPLOSIVE.search(answer):
        return False
    from math_verify import parse, verify  # imported lazily: sympy is slow to import

    _warm_up_math_verify()
    try:
        with _time_limit(_MATH_VERIFY_SECONDS):
            gold = parse(f"\\boxed{{{reference}}}", parsing_timeout=None)
            pred = parse(f"\\boxed{{{answer}}}", parsing_timeout=None)
            if not gold or not pred:
                return False
            return bool(verify(gold, pred, timeout_seconds=None))
    except (_Timeout, Exception):  # noqa: BLE001 - a verifier must never raise
        return False


def _is_none_answer(answer: str | None) -> bool:
    if answer is None:
        return True
    s = _WRAPPERS.sub(r"\1", answer).strip().strip(".").lower()
    return s in {"none", "no answer", "no solution", "\\text{none}", "\\emptyset", "\\varnothing"}


def answers_match(answer: str | None, reference: str | None, task: str) -> bool:
    """Whether an extracted answer equals the reference, SPEC §3 (never raises)."""
    try:
        if reference is None or (task == "gsm_plus" and str(reference).strip().lower() == "none"):
            return _is_none_answer(answer)
        if answer is None:
            return False
        reference = str(reference)
        if task in MULTIPLE_CHOICE_TASKS:
            letter = normalize_choice(answer)
            return letter is not None and letter == reference.strip().upper()
        ref_value, ans_value = parse_number(reference), parse_number(answer)
        if ref_value is not None and ans_value is not None:
            return ref_value == ans_value
        return _math_verify_equal(answer, reference)
    except Exception:  # noqa: BLE001 - a verifier must never raise
        return False


def is_correct(text: str, reference: str | None, task: str) -> bool:
    """SPEC §3: extract the answer from a response and compare it with the reference.

    A response truncated at the token limit is incorrect too; the caller knows the finish reason
    (see `score_group`)."""
    return answers_match(extract_answer(text, task), reference, task)
