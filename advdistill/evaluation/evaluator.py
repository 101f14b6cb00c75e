"""The offline evaluator (SPEC §7): a model on a dataset split through Ray Data.

Greedy decoding by default, zero-shot for distilled students and k-shot for base models (the
caller says which), every SPEC §7 metric overall and per GSM-PLUS perturbation type / MMLU-Pro
category. Writes `metrics.json` and `predictions.jsonl`. The Serve app scores through
`score_predictions` and `summarize_predictions` too, so both report the same numbers.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from advdistill.config import DatasetConfig, ExperimentConfig
from advdistill.data.loaders import group_field, load_records
from advdistill.evaluation.metrics import summarize_predictions
from advdistill.scoring import answers_match, extract_answer
from advdistill.teacher.engines import GenerationParams

def eval_params(cfg: ExperimentConfig) -> GenerationParams:
    return GenerationParams(n=1, temperature=cfg.eval.temperature, top_p=1.0, max_tokens=cfg.eval.max_tokens)


def score_prediction(row: dict[str, Any]) -> dict[str, Any]:
    """One generated row (record + responses[0]) → its prediction: extracted answer, correctness
    (a response cut at the token limit is incorrect), tokens."""
    response, finish = row["responses"][0], row["finish_reasons"][0]
    extracted = extract_answer(response, row["task"])
    correct = finish != "length" and answers_match(extracted, row["reference"], row["task"])
    meta = row.get("meta") or {}
    if isinstance(meta, str):
        meta = json.loads(meta)
    return {"id": row["id"], "response": response, "extracted": extracted, "correct": bool(correct),
            "tokens": int(row["token_lengths"][0]), "finish_reason": finish,
            # the fields results are broken down by (None where a dataset has none)
            "perturbation_type": meta.get("perturbation_type"), "category": meta.get("category")}


def score_predictions(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [score_prediction(r) for r in rows]


def _score_batch(batch: pa.Table) -> pa.Table:
    rows = batch.to_pylist()
    return pa.Table.from_pylist([dict(score_prediction(r), split=r["split"]) for r in rows])


def evaluate_splits(cfg: ExperimentConfig, model: str, splits: dict[str, tuple[DatasetConfig, Path]], *,
                    few_shot: int = 0) -> dict[str, dict[str, Any]]:
    """Evaluate `model` on several splits in one pass (one engine start): {label: (dataset,
    output folder)} → {label: metrics}; each folder gets metrics.json and predictions.jsonl."""
    import ray

    from advdistill.teacher.actor import generate_stage

    records, quarantined = [], {}
    for label, (dataset, _) in splits.items():
        loaded = load_records(dataset)
        if not loaded.records:
            raise ValueError(f"no records to evaluate in {dataset.name}/{dataset.split}")
        quarantined[label] = len(loaded.quarantined)
        records += [dict(r, meta=json.dumps(r["meta"]), split=label) for r in loaded.records]
    started = time.time()
    ds = generate_stage(ray.data.from_items(records), model=model, engine=cfg.eval.engine, params=eval_params(cfg),
                        prompt=cfg.prompt, few_shot=few_shot, seed=0, resources=cfg.eval.resources)
    ds = ds.map_batches(_score_batch, batch_format="pyarrow", batch_size=cfg.eval.engine.batch_size, num_cpus=0.5)
    by_split: dict[str, list[dict[str, Any]]] = {label: [] for label in splits}
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        for row in batch.to_pylist():
            by_split[row.pop("split")].append(row)
    wall = time.time() - started
    results = {}
    for label, (dataset, output) in splits.items():
        predictions = sorted(by_split[label], key=lambda p: p["id"])
        metrics = summarize_predictions(predictions, group_by=group_field(dataset.name))
        metrics.update({
            "model": model, "dataset": dataset.name, "split": dataset.split, "few_shot": few_shot,
            "quarantined": quarantined[label], "tokens_generated": sum(p["tokens"] for p in predictions),
            # one pass served every split: its wall time is shared in proportion to the records
            "wall_seconds": round(wall * len(predictions) / len(records), 2),
        })
        output = Path(output)
        output.mkdir(parents=True, exist_ok=True)
        (output / "metrics.json").write_text(json.dumps(metrics, indent=2))
        with (output / "predictions.jsonl").open("w") as handle:
            for p in predictions:
                handle.write(json.dumps(p) + "\n")
        results[label] = metrics
    return results


def evaluate(cfg: ExperimentConfig, model: str, dataset: DatasetConfig, output: str | Path, *, few_shot: int = 0) -> dict[str, Any]:
    """Evaluate `model` on one dataset split; returns the metrics (also in OUTPUT/metrics.json)."""
    return evaluate_splits(cfg, model, {"split": (dataset, Path(output))}, few_shot=few_shot)["split"]
