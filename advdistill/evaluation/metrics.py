"""Evaluation metrics, SPEC §7 (paper §5): accuracy, verbosity, degeneracy, template adherence.

Each takes plain lists (responses, token counts, correctness) so the offline evaluator, the
Serve endpoint and the report compute exactly the same numbers.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable, Sequence

from advdistill.evaluation.stats import wilson_interval
from advdistill.scoring.extract import last_boxed


def accuracy(correct: Sequence[bool]) -> float:
    """Share of correct responses (0 for none)."""
    return sum(bool(c) for c in correct) / len(correct) if correct else 0.0


def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def verbosity(token_counts: Sequence[int], correct: Sequence[bool]) -> dict[str, float | None]:
    """Mean response tokens of correct and of incorrect responses, and the verbosity ratio
    mean_incorrect / mean_correct (None where a side is empty)."""
    mean_correct = _mean(n for n, ok in zip(token_counts, correct) if ok)
    mean_incorrect = _mean(n for n, ok in zip(token_counts, correct) if not ok)
    ratio = mean_incorrect / mean_correct if mean_correct and mean_incorrect is not None else None
    return {"mean_tokens_correct": mean_correct, "mean_tokens_incorrect": mean_incorrect, "verbosity_ratio": ratio}


def seq_rep_4(text: str) -> float:
    """1 − |unique 4-grams| / |4-grams| over lower-cased whitespace words (0 below 4 words)."""
    words = text.lower().split()
    if len(words) < 4:
        return 0.0
    grams = [tuple(words[i : i + 4]) for i in range(len(words) - 3)]
    return 1.0 - len(set(grams)) / len(grams)


def degeneracy(responses: Sequence[str], correct: Sequence[bool]) -> dict[str, float | None]:
    """Mean seq-rep-4 × 100, overall and split correct / incorrect."""
    reps = [100.0 * seq_rep_4(r) for r in responses]
    return {
        "degeneracy": _mean(reps),
        "degeneracy_correct": _mean(r for r, ok in zip(reps, correct) if ok),
        "degeneracy_incorrect": _mean(r for r, ok in zip(reps, correct) if not ok),
    }


def has_block(text: str, open_tag: str, close_tag: str) -> bool:
    """Whether `text` has an `open_tag … close_tag` block: a closing tag counts only after an
    opening one (`</answer>` before any `<answer>` is no answer block)."""
    start = text.find(open_tag)
    return start >= 0 and text.find(close_tag, start + len(open_tag)) >= 0


def template_flags(text: str) -> dict[str, bool]:
    """Which parts of the template a response has: a `<think>` block, an `<answer>` block, a
    `\\boxed{}`, and all three."""
    think = has_block(text, "<think>", "</think>")
    answer = has_block(text, "<answer>", "</answer>")
    boxed = last_boxed(text) is not None
    return {"think": think, "answer": answer, "boxed": boxed, "all": think and answer and boxed}


def template_adherence(responses: Sequence[str]) -> dict[str, float]:
    """Share of responses with each template part (SPEC §7)."""
    if not responses:
        return {"think": 0.0, "answer": 0.0, "boxed": 0.0, "all": 0.0}
    flags = [template_flags(r) for r in responses]
    return {key: sum(f[key] for f in flags) / len(flags) for key in ("think", "answer", "boxed", "all")}


def summarize(responses: Sequence[str], token_counts: Sequence[int], correct: Sequence[bool]) -> dict[str, Any]:
    """Every SPEC §7 metric for one set of responses; the accuracy with its 95% (Wilson)
    interval, since a share of n items is only as good as n. Wilson takes the items as
    independent; where they cluster (a synthetic skeleton, a GSM-PLUS seed question) the report
    recomputes the interval from the saved predictions with the cluster bootstrap (`stats`)."""
    interval = wilson_interval(correct)
    return {
        "n": len(responses),
        "accuracy": accuracy(correct),
        "accuracy_interval": [interval.low, interval.high],
        **verbosity(token_counts, correct),
        **degeneracy(responses, correct),
        "template": template_adherence(responses),
    }


def summarize_predictions(predictions: Sequence[dict[str, Any]], group_by: str | None = None) -> dict[str, Any]:
    """`summarize` over prediction rows (response, tokens, correct), overall and, when
    `group_by` names a field (perturbation type, category), per value of that field."""
    def of(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return summarize([r["response"] for r in rows], [r["tokens"] for r in rows], [r["correct"] for r in rows])

    result = of(predictions)
    if group_by:
        groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in predictions:
            key = row.get(group_by)
            if key is not None:
                groups[str(key)].append(row)
        if groups:
            result[f"by_{group_by}"] = {key: of(rows) for key, rows in sorted(groups.items())}
    return result


