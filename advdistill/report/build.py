"""Assemble `report/report.md` and its figures from a run folder (see `advdistill.pipeline`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from advdistill.report import plots
from advdistill.report.tables import accuracy_table, behaviour_tables, breakdown_table, cost_table, training_table


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def load_results(run: Path, manifest: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """results[model][split label] = metrics.json of that evaluation (missing ones left out)."""
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for model in manifest["models"]:
        for label in manifest["splits"]:
            metrics = _read_json(run / "eval" / f"{model}-{label}" / "metrics.json")
            if metrics is not None:
                results.setdefault(model, {})[label] = metrics
    return results


def write_report(run: str | Path) -> Path:
    """Write RUN/report/report.md (+ PNGs) and return its path."""
    from advdistill.teacher.stage import read_shards

    run = Path(run)
    manifest = _read_json(run / "run.json")
    if manifest is None:
        raise FileNotFoundError(f"{run / 'run.json'} not found: is {run} a distill.py output folder?")
    out = run / "report"
    out.mkdir(parents=True, exist_ok=True)
    splits, ood = manifest["splits"], manifest["ood"]
    results = load_results(run, manifest)
    summary = _read_json(run / "curate" / "summary.json") or {}

    sections = [f"# AdvDistill report: {manifest['name']}",
                f"Teacher `{manifest['models']['teacher']['path']}`, student `{manifest['models']['base']['path']}`; "
                f"trained on `{manifest['train_dataset']}`. OOD sets are marked *.",
                "## Accuracy (paper Table 1 shape)", accuracy_table(results, splits, ood)]
    for label in splits:
        for key in ("perturbation_type", "category"):
            table = breakdown_table(results, label, key)
            if table:
                sections += [f"### {label}: accuracy by {key.replace('_', ' ')}", table]
    sections += ["## Behaviour", behaviour_tables(results, splits)]

    figures = []
    groups = read_shards(run / "curate" / "groups", ["advantages"])
    if groups is not None:
        advantages = [a for row in groups.column("advantages").to_pylist() for a in row]
        figures.append(plots.advantage_distribution(advantages, out / "advantages.png"))
    if summary.get("correct_per_group"):
        figures.append(plots.correct_per_group(summary["correct_per_group"], out / "correct-per-group.png"))
    for label in splits:
        if any(label in per for per in results.values()):
            figures += plots.behaviour_bars(results, label, out)
    histories = {path.parent.name.removeprefix("train-"): _read_jsonl(path) for path in sorted(run.glob("train-*/metrics.jsonl"))}
    histories = {k: v for k, v in histories.items() if v}
    if histories:
        figures.append(plots.training_curves(histories, out / "training-loss.png"))

    if summary:
        sections += ["## Curation",
                     f"{summary['prompts_read']} prompts × {summary['samples_per_prompt']} samples: "
                     f"{summary['kept']} groups kept, {summary['dropped']} dropped (no correct response), "
                     f"{summary['quarantined']} input rows quarantined; teacher per-sample accuracy "
                     f"{100 * summary['per_sample_accuracy']:.1f}%, template followed in "
                     f"{100 * summary['format_ok']:.1f}% of samples."]
    trainings = {path.parent.name.removeprefix("train-"): _read_json(path) for path in sorted(run.glob("train-*/result.json"))}
    if trainings:
        sections += ["## Training",
                     "Validation groups are a stated choice (`train.val_fraction`): that share of the kept groups, "
                     "picked by a hash of the group id, is held out before training. An optimizer step takes "
                     "`train.groups_per_step` groups whatever the number of workers; an epoch's last step takes the "
                     "remainder, so no group is skipped.",
                     training_table(trainings)]
    sections += ["## Cost per stage", cost_table(manifest.get("stages", {}))]
    sections += ["## Figures"] + [f"![{p.stem}]({p.name})" for p in figures]
    path = out / "report.md"
    path.write_text("\n\n".join(sections) + "\n")
    return path
