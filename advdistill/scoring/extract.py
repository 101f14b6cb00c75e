"""Answer extraction, SPEC §3.

Order: the `\\boxed{…}` answer inside the `<answer>` block (balanced braces); else the last
`\\boxed{…}` anywhere; else, for free-form answers, `#### X`, `answer is X`, then the last number
(math) or the official MMLU-Pro patterns (multiple choice). Every pass is linear in the text
length, so adversarial inputs (100k characters, unbalanced or nested braces) stay fast.

Several boxed answers in the `<answer>` block are one answer, a list or set, as math-verify reads
them (`latex2sympy2_extended.extract_boxed_content`): going back from the last box, an earlier box
joins when fewer than 10 characters separate them, or fewer than 70 that include "and", "or", ","
or ";" (and its content differs); repeats of the same content count once. So
`\\boxed{(2, 2)} \\text{ and } \\boxed{(6, 2)}` is the answer `(2, 2), (6, 2)`. We join with ", "
where math-verify joins with ",", so that `\\boxed{1} and \\boxed{234}` is the set {1, 234}, not
the number 1,234. Multiple choice keeps the last box: one letter is the answer.

"X" in `#### X` and `answer is X` is a number, or a statement that the question cannot be
answered ("the answer is none", GSM-PLUS critical thinking). A free-form response whose last
number is followed by such a statement ("… so we cannot determine the price") answers with the
statement.
"""

from __future__ import annotations

import re

from advdistill.scoring.critical_thinking import STATEMENT, UNANSWERABLE
from advdistill.tasks import OPTION_LETTERS, get_task

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_OPEN, _ANSWER_CLOSE = "<answer>", "</answer>"
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_NUMBER_AFTER = r"\$?\s*(-?[\d,]*\.?\d+)"
_UNANSWERABLE_AFTER = rf"(?:that\s+)?(?:\\text\s*\{{)?\s*({UNANSWERABLE}[^\n.$}}]{{0,60}})"
_HASHES = [re.compile(rf"####\s*{_NUMBER_AFTER}"), re.compile(rf"####\s*{_UNANSWERABLE_AFTER}", re.IGNORECASE)]
_ANSWER_IS = [
    re.compile(rf"answer is\s*:?\s*{_NUMBER_AFTER}", re.IGNORECASE),
    re.compile(rf"answer is\s*:?\s*{_UNANSWERABLE_AFTER}", re.IGNORECASE),
]
_STATEMENT = re.compile(rf"{STATEMENT}[^\n.$]{{0,60}}", re.IGNORECASE)
# The official MMLU-Pro extraction patterns, in their order ([A-J]: the option letters).
_LETTER = f"[{OPTION_LETTERS[0]}-{OPTION_LETTERS[-1]}]"
_MC_ANSWER_IS = re.compile(rf"answer is \(?({_LETTER})\)?")
_MC_ANSWER_COLON = re.compile(rf"[aA]nswer:\s*({_LETTER})")
_MC_LETTER = re.compile(rf"\b({_LETTER})\b")
_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mathbf)\s*\{([^{}]*)\}")
_LEADING_LETTER = re.compile(rf"^({_LETTER})(?![A-Za-z])")
# math-verify's rule for boxes that belong to one answer (see the module doc).
_NEAR = 10
_SEPARATED = 70
_SEPARATOR = re.compile(r"\b(?:and|or)\b|,|;")


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


def _boxes(text: str) -> list[tuple[int, int, int | None]]:
    """(command start, opening brace, closing brace or None) of every `\\boxed{`, in order."""
    found = [(m.start(), m.end() - 1) for m in _BOXED.finditer(text)]
    if not found:
        return []
    pairs = _matching_braces(text, found[0][1])
    return [(start, brace, pairs.get(brace)) for start, brace in found]


def _last_balanced(boxes: list[tuple[int, int, int | None]]) -> int | None:
    for i in range(len(boxes) - 1, -1, -1):
        if boxes[i][2] is not None:
            return i
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{…}` whose braces balance, or None."""
    boxes = _boxes(text)
    i = _last_balanced(boxes)
    if i is None:
        return None
    _, brace, close = boxes[i]
    return text[brace + 1 : close].strip()


def boxed_answers(text: str) -> list[str]:
    """The boxes that make up the final answer (see the module doc), in order; [] if none."""
    boxes = _boxes(text)
    i = _last_balanced(boxes)
    if i is None:
        return []
    start, brace, close = boxes[i]
    answers = [text[brace + 1 : close].strip()]
    for prev_start, prev_brace, prev_close in reversed(boxes[:i]):
        if prev_close is None or prev_close > start:  # unbalanced, or encloses the later box
            break
        content = text[prev_brace + 1 : prev_close].strip()
        gap = text[prev_close + 1 : start]
        near = len(gap) < _NEAR
        separated = content != answers[-1] and len(gap) < _SEPARATED and _SEPARATOR.search(gap)
        if not (near or separated):
            break
        if content != answers[-1]:
            answers.append(content)
        start = prev_start
    return answers[::-1]


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


def _last_match(patterns: list[re.Pattern[str]], text: str) -> re.Match[str] | None:
    """The match that ends last over all `patterns`."""
    best = None
    for pattern in patterns:
        for m in pattern.finditer(text):
            if best is None or m.end() > best.end():
                best = m
    return best


def _fallback_math(text: str) -> str | None:
    for patterns in (_HASHES, _ANSWER_IS):
        found = _last_match(patterns, text)
        if found is not None:
            return found.group(1).strip().rstrip(",")
    number = _last_match([_NUMBER], text)
    statement = _STATEMENT.search(text, number.end() if number is not None else 0)
    if statement is not None:
        return statement.group(0).strip()
    return number.group(0).rstrip(",") if number is not None else None


def _fallback_choice(text: str) -> str | None:
    for pattern in (_MC_ANSWER_IS, _MC_ANSWER_COLON, _MC_LETTER):
        found = _last_match([pattern], text)
        if found is not None:
            return found.group(1)
    return None


def extract_answer(text: str, task: str) -> str | None:
    """The model's final answer in `text`, SPEC §3; None when there is none.

    Multiple-choice answers come back as the bare option letter when one can be read."""
    if not isinstance(text, str) or not text:
        return None
    multiple_choice = get_task(task).multiple_choice
    block = answer_block(text)
    boxed = None
    if block is not None and multiple_choice:
        boxed = last_boxed(block)
    elif block is not None:
        answers = boxed_answers(block)
        boxed = ", ".join(answers) if answers else None
    if boxed is None:
        boxed = last_boxed(text)
    if boxed is not None:
        if multiple_choice:
            return normalize_choice(boxed) or boxed
        return boxed
    return _fallback_choice(text) if multiple_choice else _fallback_math(text)
