"""Markdown tables of a run: the paper's Table 1 shape, behaviour, cost. Pure functions over the
metrics dicts the evaluator writes."""

from __future__ import annotations

from typing import Any, Sequence

MODEL_LABELS = {"teacher": "Teacher", "base": "Student base", "sft": "Student SFT", "advdistill": "Student AdvDistill"}


def model_label(name: str) -> str:
    """Table label of a run's model key (`sft@Qwen2.5-3B` → `Qwen2.5-3B SFT`)."""
    if "@" in name:
        kind, slug = name.split("@", 1)
        return f"{slug} {'SFT' if kind == 'sft' else 'base'}"
    return MODEL_LABELS.get(name, name)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}%"


def _num(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def accuracy_cell(metrics: dict[str, Any] | None) -> str:
    """`65.20% [62.2, 68.1]`: the accuracy and its 95% interval, in points."""
    if not metrics or metrics.get("accuracy") is None:
        return "–"
    interval = metrics.get("accuracy_interval")
    if not interval:
        return _pct(metrics["accuracy"])
    return f"{_pct(metrics['accuracy'])} [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"


def accuracy_table(results: dict[str, dict[str, dict[str, Any]]], splits: Sequence[str], ood: Sequence[str]) -> str:
    """Table 1: rows teacher / base / SFT / AdvDistill, a column per split (OOD marked *), each
    accuracy with its 95% interval, and the distinct items (and, where known, the clusters the
    interval resampled) in the header."""
    def head(split: str) -> str:
        first = next((per[split] for per in results.values() if split in per), None)
        if first is None:
            return split
        clusters = f", {first['clusters']:,} clusters" if first.get("clusters") is not None else ""
        return f"{split}{'*' if split in ood else ''} (n = {first['n']:,} items{clusters})"

    rows = [[model_label(m)] + [accuracy_cell(results[m].get(s)) for s in splits] for m in results]
    return markdown_table(["Model"] + [head(s) for s in splits], rows)


def _points(value: float) -> str:
    return f"{100 * value:+.1f}"


def paired_table(comparisons: dict[tuple[str, str], dict[str, dict[str, Any]]], splits: Sequence[str],
                 ood: Sequence[str]) -> str:
    """Paired differences `a − b` in accuracy points on the same items, with their paired
    cluster-bootstrap 95% interval and the items only one of the two gets right (`a only / b only`)."""
    rows = []
    for (a, b), per_split in comparisons.items():
        cells = []
        for split in splits:
            c = per_split.get(split)
            cells.append("–" if c is None else f"{_points(c['value'])} [{_points(c['low'])}, {_points(c['high'])}] "
                                                f"({c['only_a']} / {c['only_b']})")
        rows.append([f"{model_label(a)} − {model_label(b)}"] + cells)
    return markdown_table(["Difference (points)"] + [f"{s}*" if s in ood else s for s in splits], rows)


def behaviour_tables(results: dict[str, dict[str, dict[str, Any]]], splits: Sequence[str]) -> str:
    """Verbosity and degeneracy split correct/incorrect, and template adherence, per split."""
    out = []
    for split in splits:
        rows_v, rows_t = [], []
        for model, per_split in results.items():
            m = per_split.get(split)
            if not m:
                continue
            rows_v.append([model_label(model), _num(m["mean_tokens_correct"]), _num(m["mean_tokens_incorrect"]),
                           _num(m["verbosity_ratio"], 2), _num(m["degeneracy_correct"], 2), _num(m["degeneracy_incorrect"], 2)])
            t = m["template"]
            rows_t.append([model_label(model)] + [_pct(t[k]) for k in ("think", "answer", "boxed", "all")])
        out.append(f"### {split}: verbosity and degeneracy\n\n" + markdown_table(
            ["Model", "tokens (correct)", "tokens (incorrect)", "verbosity ratio", "seq-rep-4 ×100 (correct)",
             "seq-rep-4 ×100 (incorrect)"], rows_v))
        out.append(f"### {split}: template adherence\n\n" + markdown_table(
            ["Model", "<think>", "<answer>", "\\boxed{}", "all three"], rows_t))
    return "\n\n".join(out)


def breakdown_table(results: dict[str, dict[str, dict[str, Any]]], split: str, key: str) -> str | None:
    """Accuracy per perturbation type / category for one split, if the split has them."""
    field = f"by_{key}"
    groups = sorted({g for per in results.values() for g in (per.get(split, {}).get(field) or {})})
    if not groups:
        return None
    rows = [[model_label(m)] + [_pct((per.get(split, {}).get(field) or {}).get(g, {}).get("accuracy")) for g in groups]
            for m, per in results.items()]
    return markdown_table(["Model"] + groups, rows)


def cost_table(stages: dict[str, dict[str, Any]], accelerator_hour_price: float | None = None) -> str:
    """run.json's stage costs and their total; with a price, dollars = accelerator-hours × price,
    the columns of docs/cluster-plan.md's estimates."""
    def row(name: str, tokens: str, wall: float | None, hours: float | None, note: str) -> list[str]:
        dollars = [] if accelerator_hour_price is None else [
            _num(None if hours is None else hours * accelerator_hour_price, 2)]
        return [name, tokens, _num(wall, 1), _num(hours, 4), *dollars, note]

    rows = [row(name, f"{s.get('tokens', 0):,}", s.get("wall_seconds"), s.get("accelerator_hours"),
                "skipped (done earlier)" if s.get("skipped") else "") for name, s in stages.items()]
    # No total of tokens: generated (curation, evaluation) and processed (training) do not add up.
    rows.append(row("**total**", "", sum(s.get("wall_seconds") or 0 for s in stages.values()),
                    sum(s.get("accelerator_hours") or 0 for s in stages.values()), ""))
    dollars = [] if accelerator_hour_price is None else ["dollars"]
    return markdown_table(["Stage", "tokens", "wall s", "accelerator-hours", *dollars, "note"], rows)


def training_table(runs: dict[str, dict[str, Any]]) -> str:
    """The training contract each run kept (SPEC §5–6), from its result.json: groups trained on
    and held out for validation, groups per optimizer step, steps, the learning rate, epochs and
    optimizer (compared runs should differ only in what was chosen for each on validation), groups
    the K' keep rule dropped, and responses cut at max_seq_len."""
    def count(value: Any) -> str:
        return "–" if value is None else f"{value:,}"

    rows = []
    for name, r in runs.items():
        fraction = r.get("val_fraction")
        k = r.get("responses_per_group")
        rows.append([
            model_label(name), count(r.get("train_groups")),
            f"{count(r.get('val_groups'))} ({'–' if fraction is None else f'{100 * fraction:g}%'} by id hash)",
            count(r.get("groups_per_step")), count(r.get("step")),
            "–" if r.get("lr") is None else f"{r['lr']:g}", count(r.get("epochs")), r.get("optimizer") or "–",
            "all" if k is None else str(k), count(r.get("dropped_groups")) if k is not None else "–",
            f"{count(r.get('truncated_responses'))} in {count(r.get('truncated_groups'))} groups "
            f"(max_seq_len {count(r.get('max_seq_len'))})",
        ])
    return markdown_table(["Run", "training groups", "validation groups", "groups per step", "optimizer steps",
                           "learning rate", "epochs", "optimizer", "responses per group", "dropped (no correct in the first K')",
                           "responses cut at max_seq_len"], rows)
