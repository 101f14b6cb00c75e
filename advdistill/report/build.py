"""Assemble `report/report.md` and its figures from a run folder (`advdistill.run.folders`)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from advdistill.curate.store import read_shards
from advdistill.evaluation.stats import Interval, aligned, bootstrap_accuracy, discordant_pairs, paired_difference
from advdistill.report import plots
from advdistill.report.tables import (
    accuracy_table,
    behaviour_tables,
    breakdown_table,
    cost_table,
    paired_table,
    training_table,
)
from advdistill.run.folders import RunLayout
from advdistill.storage import copy_tree
from advdistill.tasks import breakdown_fields

# The comparisons the paper's claim rests on: each distilled student against the base it started
# from, and the two methods against each other (AdvDistill − SFT).
COMPARISONS = (("advdistill", "sft"), ("advdistill", "base"), ("sft", "base"))


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def load_results(run: RunLayout, manifest: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """results[model][split label] = metrics.json of that evaluation (missing ones left out)."""
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for model in manifest["models"]:
        for label in manifest["splits"]:
            metrics = _read_json(run.eval(model, label).metrics)
            if metrics is not None:
                results.setdefault(model, {})[label] = metrics
    return results


def load_evaluation(run: RunLayout, model: str, split: str) -> tuple[dict[str, bool], dict[str, str]] | None:
    """({item id: correct}, {item id: cluster}) of one evaluation (its predictions.jsonl), or None
    if it did not run. Rows saved before predictions named their cluster stand alone."""
    rows = _read_jsonl(run.eval(model, split).predictions)
    if not rows:
        return None
    return {r["id"]: bool(r["correct"]) for r in rows}, {r["id"]: r.get("cluster") or r["id"] for r in rows}


def accuracy_intervals(run: str | Path, models: list[str], splits: list[str]) -> dict[str, dict[str, Interval]]:
    """intervals[model][split]: each evaluation's accuracy with its cluster-bootstrap interval
    (related items resampled together), for every evaluation whose predictions exist."""
    layout = RunLayout(run)
    out: dict[str, dict[str, Interval]] = {}
    for model in models:
        for split in splits:
            evaluation = load_evaluation(layout, model, split)
            if evaluation is not None:
                verdicts, clusters = evaluation
                ids = sorted(verdicts)
                out.setdefault(model, {})[split] = bootstrap_accuracy([verdicts[i] for i in ids], [clusters[i] for i in ids])
    return out


def paired_comparisons(run: str | Path, models: list[str], splits: list[str],
                       pairs: tuple[tuple[str, str], ...] = COMPARISONS) -> dict[tuple[str, str], dict[str, dict[str, Any]]]:
    """comparisons[(a, b)][split] = the paired difference acc(a) − acc(b) on that split's items,
    its cluster-bootstrap interval and the discordant counts, for every pair both of whose
    evaluations ran."""
    layout = RunLayout(run)
    out: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for a, b in pairs:
        if a not in models or b not in models:
            continue
        for split in splits:
            ea, eb = load_evaluation(layout, a, split), load_evaluation(layout, b, split)
            if ea is None or eb is None:
                continue
            x, y = aligned(ea[0], eb[0])
            ids = sorted(ea[0])
            clusters = [ea[1][i] for i in ids]
            if clusters != [eb[1][i] for i in ids]:
                raise ValueError(f"{a} and {b} name different clusters for the same {split} items")
            out.setdefault((a, b), {})[split] = {**paired_difference(x, y, clusters).as_dict(), **discordant_pairs(x, y)}
    return out


def _shown(manifest: dict[str, Any], model: str) -> str:
    """A model as the config named it (`name`; runs before it was recorded: where it was found)."""
    entry = manifest["models"][model]
    return entry.get("name", entry["path"])


def write_report(run: str | Path) -> Path:
    """Write RUN/report/report.md (+ PNGs) and return its path."""
    layout = RunLayout(run)
    manifest = _read_json(layout.manifest)
    if manifest is None:
        raise FileNotFoundError(f"{layout.manifest} not found: is {run} a distill.py output folder?")
    # Figures are drawn into a local folder; a run on a URI (advdistill.storage) gets a copy.
    staging = None if isinstance(layout.report, Path) else tempfile.TemporaryDirectory(prefix="advdistill-report-")
    out = layout.report if staging is None else Path(staging.name)
    out.mkdir(parents=True, exist_ok=True)
    splits, ood = manifest["splits"], manifest["ood"]
    results = load_results(layout, manifest)
    # The accuracies' intervals from the saved verdicts, clusters resampled together (metrics.json
    # holds a Wilson interval, which takes items as independent).
    for model, per_split in accuracy_intervals(layout.root, list(manifest["models"]), splits).items():
        for label, interval in per_split.items():
            if label in results.get(model, {}):
                results[model][label] = {**results[model][label], "accuracy_interval": [interval.low, interval.high],
                                         "clusters": interval.clusters}
    summary = layout.curate.read_summary()

    sections = [f"# AdvDistill report: {manifest['name']}",
                f"Teacher `{_shown(manifest, 'teacher')}`, student `{_shown(manifest, 'base')}`; "
                f"trained on `{manifest['train_dataset']}`. OOD sets are marked *.",
                "## Accuracy (paper Table 1 shape)",
                "Greedy decoding; each accuracy with its 95% cluster-bootstrap interval: 10,000 resamples of the "
                "clusters of related items (items of one synthetic skeleton, GSM-PLUS perturbations of one question; "
                "otherwise each item alone), each cluster with all its items. The header gives the distinct items "
                "and their clusters.",
                accuracy_table(results, splits, ood)]
    comparisons = paired_comparisons(layout.root, list(manifest["models"]), splits)
    if comparisons:
        sections += ["## Paired differences",
                     "Accuracy of one model minus another's on the same items, in points, with a paired "
                     "cluster-bootstrap 95% interval (10,000 resamples of the clusters, both models keeping their "
                     "verdicts on every drawn item); in brackets after it, the items only the first "
                     "and only the second model gets right. An interval that contains 0 is no evidence of a difference.",
                     paired_table(comparisons, splits, ood)]
    for label in splits:
        for key in breakdown_fields():
            table = breakdown_table(results, label, key)
            if table:
                sections += [f"### {label}: accuracy by {key.replace('_', ' ')}", table]
    sections += ["## Behaviour", behaviour_tables(results, splits)]

    figures = []
    groups = read_shards(layout.curate.groups, ["advantages"])
    if groups is not None:
        advantages = [a for row in groups.column("advantages").to_pylist() for a in row]
        figures.append(plots.advantage_distribution(advantages, out / "advantages.png"))
    if summary.get("correct_per_group"):
        figures.append(plots.correct_per_group(summary["correct_per_group"], out / "correct-per-group.png"))
    for label in splits:
        if any(label in per for per in results.values()):
            figures += plots.behaviour_bars(results, label, out)
    histories = {name: _read_jsonl(t.metrics) for name, t in layout.trainings().items()}
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
    trainings = {name: _read_json(t.result) for name, t in layout.trainings().items() if t.result.is_file()}
    if trainings:
        sections += ["## Training",
                     "Validation groups are a stated choice (`train.val_fraction`): that share of the kept groups, "
                     "picked by a hash of the group id, is held out before training. An optimizer step takes "
                     "`train.groups_per_step` groups whatever the number of workers; an epoch's last step takes the "
                     "remainder, so no group is skipped. Every method trains on the same kept groups with the same "
                     "optimizer and epochs; the learning rate may differ, each method's chosen on the validation split "
                     "(`train.lr`, or the method's own in `train.method_lr`; bench/fidelity.py), never on test or OOD.",
                     training_table(trainings)]
    sections += ["## Cost per stage", cost_table(manifest.get("stages", {}), manifest.get("accelerator_hour_price"))]
    sections += ["## Figures"] + [f"![{p.stem}]({p.name})" for p in figures]
    path = out / "report.md"
    path.write_text("\n\n".join(sections) + "\n")
    if staging is not None:
        copy_tree(out, layout.report)
        staging.cleanup()
        return layout.report / "report.md"
    return path
