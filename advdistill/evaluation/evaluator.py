"""The offline evaluator (SPEC §7): a model on dataset splits through Ray Data.

Greedy decoding by default, zero-shot for distilled students and k-shot for base models (the
caller says which), every SPEC §7 metric overall and per value of the task's breakdown field
(GSM-PLUS perturbation type, MMLU-Pro category). Writes `metrics.json` and `predictions.jsonl`
(`EvalOutput`). The Serve app scores through `score_predictions` and `summarize_predictions` too,
so both report the same numbers.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from advdistill.config import DatasetConfig, ExperimentConfig
from advdistill.data.loaders import load_records
from advdistill.evaluation.metrics import summarize_predictions
from advdistill.fingerprint import eval_fingerprint
from advdistill.generation.base import GenerationParams
from advdistill.generation.ledger import Ledger
from advdistill.generation.pool import actor_pool
from advdistill.generation.ray_stage import generate_and_score
from advdistill.schema import GeneratedGroup, Prediction, prediction_schema
from advdistill.rerun import claim
from advdistill.scoring import judge
from advdistill.storage import location
from advdistill.tasks import breakdown_fields, get_task, record_cluster


class EvalOutput:
    """One evaluation's folder."""

    def __init__(self, folder: str | Path):
        self.folder = location(folder)  # a local folder or a URI (advdistill.storage)
        self.metrics = self.folder / "metrics.json"  # SPEC §7 metrics, overall and per breakdown value
        self.predictions = self.folder / "predictions.jsonl"  # one `schema.Prediction` per item

    def is_complete(self) -> bool:
        return self.metrics.is_file()

    def owned(self) -> list:
        """What an evaluation writes here (what `--restart` removes, `advdistill.rerun`)."""
        return [self.metrics, self.predictions]

    def write(self, metrics: dict[str, Any], predictions: list[Prediction]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.metrics.write_text(json.dumps(metrics, indent=2))
        self.predictions.write_text("".join(json.dumps(p) + "\n" for p in predictions))


def eval_params(cfg: ExperimentConfig) -> GenerationParams:
    return GenerationParams(n=1, temperature=cfg.eval.temperature, top_p=1.0, max_tokens=cfg.eval.max_tokens)


def score_prediction(row: GeneratedGroup) -> Prediction:
    """One generated row (record + responses[0]) → its prediction: the extracted answer, its
    correctness (`judge`), tokens, the record's cluster (`record_cluster`: what an interval resamples
    together) and its breakdown fields (None where it has none)."""
    response, finish = row["responses"][0], row["finish_reasons"][0]
    verdict = judge(response, finish, row["reference"], row["task"], row)
    return {"id": row["id"], "response": response, "extracted": verdict.answer, "correct": bool(verdict.correct),
            "tokens": int(row["token_lengths"][0]), "finish_reason": finish, "cluster": record_cluster(row),
            **{name: row["meta"].get(name) for name in breakdown_fields()}}


def score_predictions(rows: list[GeneratedGroup]) -> list[Prediction]:
    return [score_prediction(r) for r in rows]


def _score_with_split(row: dict[str, Any]) -> dict[str, Any]:
    return {**score_prediction(row), "split": row["split"]}


def claim_evaluation(cfg: ExperimentConfig, model: str, splits: dict[str, tuple[DatasetConfig, EvalOutput]], *,
                     few_shot: int = 0, restart: bool = False) -> None:
    """Make each split's output this evaluation's before anything runs (`advdistill.rerun`): the
    same model, dataset, prompts and decoding continue; others are refused, naming the fields,
    unless `restart`."""
    for dataset, output in splits.values():
        claim(output.folder, eval_fingerprint(cfg, model, dataset, few_shot), output.owned, restart=restart)


def evaluate_splits(cfg: ExperimentConfig, model: str, splits: dict[str, tuple[DatasetConfig, EvalOutput]], *,
                    few_shot: int = 0, restart: bool = False) -> dict[str, dict[str, Any]]:
    """Evaluate `model` on several splits in one pass (one engine start): {label: (dataset,
    output)} → {label: metrics}; each output gets metrics.json and predictions.jsonl."""
    claim_evaluation(cfg, model, splits, few_shot=few_shot, restart=restart)
    pool = actor_pool(cfg.eval.resources, cfg.eval.engine, "eval")  # before loading: a bad pool fails at once
    records, quarantined = [], {}
    for label, (dataset, _) in splits.items():
        loaded = load_records(dataset)
        if not loaded.records:
            raise ValueError(f"no records to evaluate in {dataset.name}/{dataset.split}")
        quarantined[label] = len(loaded.quarantined)
        records += [dict(r, split=label) for r in loaded.records]
    started = time.time()
    # Prompts that leave no room for max_tokens in the engine's context are quarantined (counted
    # per split in metrics.json), not a failed evaluation.
    too_long: list[dict[str, Any]] = []
    split_of = {r["id"]: r["split"] for r in records}
    by_split: dict[str, list[Prediction]] = {label: [] for label in splits}
    with Ledger.open() as ledger:
        ds = generate_and_score(records, model=model, engine=cfg.eval.engine, params=eval_params(cfg),
                                prompt=cfg.prompt, few_shot=few_shot, seed=0, pool=pool, score_row=_score_with_split,
                                schema=prediction_schema(), extra=["split"], quarantine=too_long, ledger=ledger)
        for row in too_long:
            quarantined[split_of[row["id"]]] += 1
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            for row in batch.to_pylist():
                by_split[row.pop("split")].append(row)
        held = ledger.read()  # what the pool's actors held while they lived (generation/ledger.py)
    wall = time.time() - started
    results = {}
    for label, (dataset, output) in splits.items():
        predictions = sorted(by_split[label], key=lambda p: p["id"])
        metrics = summarize_predictions(predictions, group_by=get_task(dataset.name).group_by)
        metrics.update({
            "model": model, "dataset": dataset.name, "split": dataset.split, "few_shot": few_shot,
            "quarantined": quarantined[label], "tokens_generated": sum(p["tokens"] for p in predictions),
            # one pass served every split: its wall time is shared in proportion to the records
            "wall_seconds": round(wall * len(predictions) / len(records), 2),
            "accelerator_seconds": round(held.accelerator_seconds * len(predictions) / len(records), 2),
        })
        output.write(metrics, predictions)
        results[label] = metrics
    return results


def evaluate(cfg: ExperimentConfig, model: str, dataset: DatasetConfig, output: str | Path, *, few_shot: int = 0,
             restart: bool = False) -> dict[str, Any]:
    """Evaluate `model` on one dataset split; returns the metrics (also in OUTPUT/metrics.json)."""
    return evaluate_splits(cfg, model, {"split": (dataset, EvalOutput(output))}, few_shot=few_shot,
                           restart=restart)["split"]
