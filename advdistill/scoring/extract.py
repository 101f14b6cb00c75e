"""Answer extraction, SPEC §3.

Order: the last `\\boxed{…}` inside the `<answer>` block (balanced braces); else the last
`\\boxed{…}` anywhere; else, for free-form answers, `#### X`, `answer is X`, then the last number
(math) or the official MMLU-Pro patterns (multiple choice). Every pass is linear in the text
length, so adversarial inputs (100k characters, unbalanced or nested braces) stay fast.
"""

from __future__ import annotations

import re

MULTIPLE_CHOICE_TASKS = frozenset({"mmlu_pro"})

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_OPEN, _ANSWER_CLOSE = "<answer>", "</answer>"
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_HASHES = re.compile(r"####\s*\$?\s*(-?[\d,]*\.?\d+)")
_ANSWER_IS_NUMBER = re.compile(r"answer is\s*:?\s*\$?\s*(-?[\d,]*\.?\d+)", re.IGNORECASE)
# The official MMLU-Pro extraction patterns, in their order.
_MC_ANSWER_IS = re.compile(r"answer is \(?([A-J])\)?")
_MC_ANSWER_COLON = re.compile(r"[aA]nswer:\s*([A-J])")
_MC_LETTER = re.compile(r"\b([A-J])\b")
_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mathbf)\s*\{([^{}]*)\}")
_LEADING_LETTER = re.compile(r"^([A-J])(?![A-Za-z])")


def _matching_braces(text: str, start: int) -> dict[int, int]:
    """Map each '{' at or after `start` to its matching '}' (one linear pass with a stack)."""
    pairs: dict[int, int] = {}
    stack: list[int] = []
    for i in range(start, len(text)):
        ch = text[i]
        if ch == "{":
            stack.append(i)
        elif ch == "}" and stack:
            pairs[stack.pop()] = i
    return pairs


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{…}` whose braces balance, or None."""
    starts = [m.end() - 1 for m in _BOXED.finditer(text)]  # index of each opening brace
    if not starts:
        return None
    pairs = _matching_braces(text, starts[0])
    for brace in reversed(starts):
        close = pairs.get(brace)
        if close is not None:
            return text[brace + 1 : close].strip()
    return None


def answer_block(text: str) -> str | None:
    """The text of the last `<answer>` block (to `</answer>`, or to the end if unclosed)."""
    start = text.rfind(_ANSWER_OPEN)
    if start < 0:
        return None
    start += len(_ANSWER_OPEN)
    end = text.find(_ANSWER_CLOSE, start)
    return text[start:] if end < 0 else text[start:end]


def normalize_choice(answer: str) -> str | None:
    """`\\text{B}`, `(B)`, `**B**`, `B. Mercury` -> "B"; None when no option letter leads."""
    s = _TEXT_WRAPPER.sub(r"\1", answer)
    s = s.replace("**", "").replace("(", "").replace(")", "").strip()
    m = _LEADING_LETTER.match(s)
    return m.group(1) if m else None


def _last(pattern: re.Pattern[str], text: str) -> str | None:
    found = None
    for found in pattern.finditer(text):
        pass
    return found.group(1) if found is not None and pattern.groups else (found.group(0) if found else None)


def _fallback_math(text: str) -> str | None:
    for pattern in (_HASHES, _ANSWER_IS_NUMBER):
        found = _last(pattern, text)
        if found is not None:
            return found.rstrip(",")
    found = _last(_NUMBER, text)
    return found.rstrip(",") if found is not None else None


def _fallback_choice(text: str) -> str | None:
    for pattern in (_MC_ANSWER_IS, _MC_ANSWER_COLON, _MC_LETTER):
        found = _last(pattern, text)
        if found is not None:
            return found
    return None


def extract_answer(text: str, task: str) -> str | None:
    """The model's final answer in `text`, SPEC §3; None when there is none.

    Multiple-choice answers come back as the bare option letter when one can be read."""
    if not isinstance(text, str) or not text:
        return None
    block = answer_block(text)
    boxed = last_boxed(block) if block is not None else None
    if boxed is None:
        boxed = last_boxed(text)
    multiple_choice = task in MULTIPLE_CHOICE_TASKS
    if boxed is not None:
        if multiple_choice:
            return normalize_choice(boxed) or boxed
        return boxed
    return _fallback_choice(text) if multiple_choice else _fallback_math(text)
