"""The offline evaluator on Ray Data with the tiny models."""

import json

from advdistill.config import DatasetConfig
from advdistill.evaluation.evaluator import evaluate
from advdistill.evaluation.metrics import summarize_predictions

from conftest import TINY_TEACHER


def test_writes_metrics_and_predictions(offline_test_metrics):
    out, metrics = offline_test_metrics
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == metrics["n"] == 16
    assert {"id", "response", "extracted", "correct", "tokens"} <= set(predictions[0])
    recomputed = summarize_predictions(predictions)
    for key in ("accuracy", "mean_tokens_correct", "mean_tokens_incorrect", "degeneracy", "template"):
        assert metrics[key] == recomputed[key]
    assert json.loads((out / "metrics.json").read_text())["accuracy"] == metrics["accuracy"]
    assert metrics["template"]["all"] > 0.8  # the student base follows the template


def test_ood_is_broken_down_by_perturbation_type(ray_cluster, tiny_cfg, tmp_path):
    metrics = evaluate(tiny_cfg, str(TINY_TEACHER), DatasetConfig(name="synthetic", split="ood", limit=10), tmp_path)
    assert set(metrics["by_perturbation_type"]) == {"numerical substitution", "digit expansion", "distraction insertion",
                                                    "adding operation", "reversing operation"}
    assert sum(m["n"] for m in metrics["by_perturbation_type"].values()) == 10
