"""Stage 2, distill: the driver side of training on Ray Train.

Reads the groups table with Ray Data, tokenises it there (CPU tasks), holds out validation
groups, and runs `train_loop` on a `TorchTrainer` (FSDP2, gloo on CPU, NCCL on GPU). Everything
a worker writes goes through Ray Train's storage (`OUTPUT/checkpoints`), so the same code works
on a laptop and on a cluster with shared storage; at the end the driver copies the last
checkpoint's transformers export to `OUTPUT/final` and its metrics to `OUTPUT/metrics.jsonl`.
Rerunning with the same output continues from the latest checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from functools import lru_cache
from pathlib import Path
from typing import Any

import pyarrow as pa

from advdistill.config import ExperimentConfig, dump_config
from advdistill.train.collate import tokenize_group
from advdistill.train.loop import HF_EXPORT, METRICS_FILE, train_loop

GROUP_COLUMNS = ["id", "task", "question", "choices", "responses", "token_lengths", "correct", "rewards", "advantages"]


def groups_folder(path: str | Path) -> Path:
    """Accept the curate output folder or its `groups/` folder."""
    path = Path(path)
    folder = path / "groups" if (path / "groups").is_dir() else path
    if not any(folder.glob("*.parquet")):
        raise FileNotFoundError(f"no groups table (*.parquet) in {folder}")
    return folder


def is_validation(group_id: str, fraction: float) -> bool:
    """A fixed, seed-free holdout by id hash: the same groups are held out on every run."""
    bucket = int(hashlib.sha256(group_id.encode()).hexdigest()[:8], 16) % 10_000
    return bucket < fraction * 10_000


@lru_cache(maxsize=4)
def _tokenizer(student: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(student)


def _tokenize_batch(batch: pa.Table, cfg: ExperimentConfig, student: str) -> pa.Table:
    tokenizer = _tokenizer(student)
    rows = [tokenize_group(row, tokenizer, cfg) for row in batch.to_pylist()]
    for row in rows:
        row["val"] = is_validation(row["id"], cfg.train.val_fraction)
    return pa.Table.from_pylist(rows)


def train(cfg: ExperimentConfig, groups: str | Path, output: str | Path, *, student: str | None = None) -> dict[str, Any]:
    """Train a student on a groups table; returns the final metrics (also in the output)."""
    import ray
    import ray.train
    from ray.data.expressions import col
    from ray.train.torch import TorchTrainer

    output = Path(output).resolve()
    output.mkdir(parents=True, exist_ok=True)
    (output / "config.yaml").write_text(dump_config(cfg))
    student = student or cfg.student
    student = str(Path(student).resolve()) if Path(student).exists() else student

    table = ray.data.read_parquet(str(groups_folder(groups)), columns=GROUP_COLUMNS)
    tokenized = table.map_batches(_tokenize_batch, fn_kwargs={"cfg": cfg, "student": student},
                                  batch_format="pyarrow", batch_size=64).materialize()
    train_ds = tokenized.filter(expr=col("val") == False).materialize()  # noqa: E712 - an expression, not a bool
    val_ds = tokenized.filter(expr=col("val") == True).materialize()  # noqa: E712
    n_train, n_val = train_ds.count(), val_ds.count()
    print(f"[train] {cfg.train.mode}: {n_train} training groups, {n_val} validation groups, student {student}", flush=True)

    res = cfg.train.resources
    use_gpu = res.use_gpu if res.use_gpu is not None else ray.cluster_resources().get("GPU", 0) > 0
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "student": student},
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.train.num_workers, use_gpu=use_gpu, resources_per_worker={"CPU": res.cpus_per_worker}
        ),
        run_config=ray.train.RunConfig(
            storage_path=str(output),
            name="checkpoints",
            failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.train.checkpoints_to_keep),
        ),
        datasets={"train": train_ds, "val": val_ds},
        # Every worker reads the whole (small) tokenised table and takes its share by a seeded
        # permutation, so data order — and a resumed run — is deterministic.
        dataset_config=ray.train.DataConfig(datasets_to_split=[]),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint")
    with result.checkpoint.as_directory() as folder:
        folder = Path(folder)
        final = output / "final"
        if final.exists():
            shutil.rmtree(final)
        shutil.copytree(folder / HF_EXPORT, final)
        shutil.copy(folder / METRICS_FILE, output / METRICS_FILE)
    metrics = dict(result.metrics or {})
    metrics.update({"train_groups": n_train, "val_groups": n_val, "mode": cfg.train.mode, "student": student})
    (output / "result.json").write_text(json.dumps(metrics, indent=2, default=str))
    return metrics
