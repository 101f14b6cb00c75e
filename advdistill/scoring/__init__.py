"""Pure scoring core (SPEC §3–§5): extraction, verification, rewards, advantages. No Ray here."""

from advdistill.scoring.extract import extract_answer, last_boxed, normalize_choice
from advdistill.scoring.groups import (
    advantage_weights,
    group_advantages,
    keep_group,
    score_group,
)
from advdistill.scoring.rewards import composite_reward, cosine_reward, format_reward
from advdistill.scoring.verify import Verdict, answers_match, is_correct, judge, parse_number

__all__ = [
    "Verdict",
    "advantage_weights",
    "answers_match",
    "composite_reward",
    "cosine_reward",
    "extract_answer",
    "format_reward",
    "group_advantages",
    "is_correct",
    "judge",
    "keep_group",
    "last_boxed",
    "normalize_choice",
    "parse_number",
    "score_group",
]
