"""Figures in the spirit of the paper's Figures 2–4, as PNG files."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from advdistill.report.tables import model_label  # noqa: E402


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def advantage_distribution(advantages: Sequence[float], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(advantages, bins=40, color="#4C72B0")
    ax.set(title="Group-relative advantages of the curated responses", xlabel="advantage", ylabel="responses")
    return _save(fig, path)


def correct_per_group(counts: Sequence[int], path: Path) -> Path:
    """counts[k] = prompts with k correct responses out of K."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(range(len(counts)), counts, color=["#C44E52"] + ["#55A868"] * (len(counts) - 1))
    ax.set(title="Correct responses per prompt (0 = dropped)", xlabel="correct responses in the group", ylabel="prompts",
           xticks=range(len(counts)))
    return _save(fig, path)


def _grouped_bars(ax, labels: list[str], series: dict[str, list[float]]) -> None:
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(labels))
    for i, (name, values) in enumerate(series.items()):
        ax.bar(x + i * width - 0.4 + width / 2, [v if v is not None else 0 for v in values], width, label=name)
    ax.set_xticks(x, labels, rotation=15)
    ax.legend(fontsize=8)


def behaviour_bars(results: dict[str, dict[str, dict[str, Any]]], split: str, out: Path) -> list[Path]:
    """Verbosity, degeneracy and template adherence of each model on one split."""
    models = [m for m in results if split in results[m]]
    labels = [model_label(m) for m in models]
    metrics = [results[m][split] for m in models]
    paths = []
    fig, ax = plt.subplots(figsize=(7, 3.8))
    _grouped_bars(ax, labels, {"correct": [m["mean_tokens_correct"] for m in metrics],
                               "incorrect": [m["mean_tokens_incorrect"] for m in metrics]})
    ax.set(title=f"Verbosity on {split}", ylabel="mean response tokens")
    paths.append(_save(fig, out / f"verbosity-{split}.png"))
    fig, ax = plt.subplots(figsize=(7, 3.8))
    _grouped_bars(ax, labels, {"correct": [m["degeneracy_correct"] for m in metrics],
                               "incorrect": [m["degeneracy_incorrect"] for m in metrics]})
    ax.set(title=f"Degeneracy on {split}", ylabel="seq-rep-4 ×100")
    paths.append(_save(fig, out / f"degeneracy-{split}.png"))
    fig, ax = plt.subplots(figsize=(7, 3.8))
    _grouped_bars(ax, labels, {k: [100 * m["template"][k] for m in metrics] for k in ("think", "answer", "boxed", "all")})
    ax.set(title=f"Template adherence on {split}", ylabel="% of responses", ylim=(0, 105))
    paths.append(_save(fig, out / f"template-{split}.png"))
    return paths


def training_curves(histories: dict[str, list[dict[str, Any]]], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, history in histories.items():
        steps = [h["step"] for h in history]
        ax.plot(steps, [h["loss"] for h in history], label=f"{name} train")
        val = [(h["step"], h["val_loss"]) for h in history if "val_loss" in h]
        if val:
            ax.plot(*zip(*val), "o--", label=f"{name} validation")
    ax.set(title="Training loss", xlabel="optimizer step", ylabel="loss")
    ax.legend(fontsize=8)
    return _save(fig, path)
