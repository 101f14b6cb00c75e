"""GSM-PLUS "critical thinking" items, SPEC §3: questions with a necessary fact removed.

The reference is None: the right response says the question cannot be answered. GSM-PLUS's own
scorer (`extract_pred_ans_none` in qtli/GSM-Plus `scripts/utils/extract_ans.py`) looks for
phrases such as "not enough information", "cannot determine", "does not specify", "don't know"
and "none", and counts a response without a final answer as None, i.e. correct. Ours:

- a final answer that states the question cannot be answered (`none`, `\\text{Not enough
  information}`, "the answer is none") is correct;
- no final answer at all is correct;
- a final number is incorrect, even when the reasoning hedges before it (SPEC: "a response with
  a final number is incorrect"; the official scorer would accept it if a phrase appears anywhere).

The phrases are matched on word boundaries ("nonetheless" is not "none"), case-insensitively,
with straight or curly apostrophes. Extraction (`extract.py`) uses the same phrases to read
"the answer is none", "#### None", and a free-form response that ends by saying the question
cannot be answered.
"""

from __future__ import annotations

import re

_APOSTROPHE = r"['\u2019]"
_NOT = rf"(?:not|n{_APOSTROPHE}t)"

# Statements that the question cannot be answered: GSM-PLUS's phrases and their close variants.
_STATEMENTS = [
    r"not (?:enough|sufficient) (?:information|info|data|details)",
    r"(?:insufficient|missing)(?: necessary)? (?:information|info|data)",
    rf"(?:cannot|can not|can{_APOSTROPHE}t|could ?{_NOT}|unable to)(?: be)?"
    r" (?:determin|calculat|comput|answer|provid|solv)\w*",
    rf"(?:does|do|did) ?{_NOT} (?:specify|mention|provide|give|state|say)\w*",
    r"not (?:specif|mention|provid)\w*",
    r"not (?:given|stated)",
    rf"(?:do ?{_NOT}) (?:know|have enough)",
    r"unanswerable",
    r"undeterminable",
]
# Short final answers that mean the same, accepted only as an explicit final answer.
_FINAL_ANSWERS = [r"\bnone\b", r"\bno (?:answer|solution)\b", r"\bn/a\b", r"\\emptyset", r"\\varnothing"]

STATEMENT = rf"\b(?:{'|'.join(_STATEMENTS)})"
UNANSWERABLE = rf"(?:{STATEMENT}|{'|'.join(_FINAL_ANSWERS)})"

_UNANSWERABLE = re.compile(UNANSWERABLE, re.IGNORECASE)


def says_unanswerable(answer: str) -> bool:
    """Whether a final answer states that the question cannot be answered."""
    return bool(_UNANSWERABLE.search(answer))


def critical_thinking_correct(answer: str | None) -> bool:
    """SPEC §3: no final answer, or one saying the question cannot be answered, is correct."""
    return answer is None or says_unanswerable(str(answer))
