"""The cards of a `distill.py` run (`advdistill.cards`), written once its evaluations are done:
each training's `final/README.md` with the run's evaluation results (every evaluated model, each
accuracy with its cluster-bootstrap interval as the report gives it), and the curation folder's
dataset card."""

from __future__ import annotations

import json
from typing import Any

from advdistill.cards import write_dataset_card, write_model_card
from advdistill.report.build import accuracy_intervals
from advdistill.run.folders import RunLayout


def run_evaluations(layout: RunLayout, manifest: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """evaluations[model][split] = {accuracy, low, high, n, clusters} for every finished evaluation."""
    intervals = accuracy_intervals(layout.root, list(manifest.get("models", {})), manifest.get("splits", []))
    return {model: {split: {"accuracy": i.value, "low": i.low, "high": i.high, "n": i.n, "clusters": i.clusters}
                    for split, i in per.items()} for model, per in intervals.items()}


def write_run_cards(layout: RunLayout) -> list[Any]:
    """The dataset card of OUTPUT/curate and the model card of each OUTPUT/train-NAME/final;
    returns the cards written."""
    manifest = json.loads(layout.manifest.read_text()) if layout.manifest.is_file() else {}
    written = []
    curation = None
    if layout.curate.summary.is_file():
        curation = json.loads(layout.curate.summary.read_text())
        written.append(write_dataset_card(layout.curate.folder))
    evaluations = run_evaluations(layout, manifest)
    # The models the run did not train are shown as configured: `base (models/tiny-student)`.
    trained = layout.trainings()
    labels = {key: key if key in trained else f"{key} (`{entry.get('name', entry['path'])}`)"
              for key, entry in manifest.get("models", {}).items()}
    for name, training in trained.items():
        if training.is_complete():
            written.append(write_model_card(training.folder, evaluations, curation, name=name, labels=labels))
    return written
