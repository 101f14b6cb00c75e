"""Stage 2, distill: the driver side of training on Ray Train.

Reads the groups table with Ray Data, tokenises it there (CPU tasks), drops the groups the
`responses_per_group` keep rule rejects (counted), holds out validation groups (`val_fraction`,
by id hash — a stated choice, reported), counts the responses `max_seq_len` cuts, and runs
`train_loop` on a `TorchTrainer` (FSDP2, gloo on CPU, NCCL on GPU). Everything
a worker writes goes through Ray Train's storage (`OUTPUT/checkpoints`), so the same code works
on a laptop and on a cluster with shared storage; at the end the driver copies the last
checkpoint's transformers export to `OUTPUT/final` and its metrics to `OUTPUT/metrics.jsonl`
(`TrainOutput`). Rerunning with the same output continues from the latest checkpoint.
"""

from __future__ import annotations

import json
import shutil
from functools import lru_cache
from pathlib import Path
from typing import Any

import pyarrow as pa

from advdistill.config import ExperimentConfig, dump_config
from advdistill.curate.store import CurateOutput
from advdistill.schema import TokenisedGroup, arrow_schema, from_arrow, to_arrow
from advdistill.train.collate import student_end_of_turn_id, tokenize_group
from advdistill.train.loop import HF_EXPORT, METRICS_FILE, train_loop


class TrainOutput:
    """A training run's folder (SPEC §9b)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.checkpoints = self.folder / "checkpoints"  # Ray Train's storage: sharded, resumable
        self.final = self.folder / "final"  # a transformers folder with the tokenizer
        self.metrics = self.folder / "metrics.jsonl"  # one line per optimizer step
        self.result = self.folder / "result.json"  # the last step's figures and the training contract
        self.config = self.folder / "config.yaml"

    def is_complete(self) -> bool:
        return self.final.is_dir() and self.result.is_file()


def groups_folder(path: str | Path) -> Path:
    """Accept the curate output folder or its `groups/` folder."""
    path = Path(path)
    folder = CurateOutput(path).groups if CurateOutput(path).groups.is_dir() else path
    if not any(folder.glob("*.parquet")):
        raise FileNotFoundError(f"no groups table (*.parquet) in {folder}")
    return folder


@lru_cache(maxsize=4)
def _tokenizer(student: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(student)


def _tokenize_batch(batch: pa.Table, cfg: ExperimentConfig, student: str) -> pa.Table:
    tokenizer = _tokenizer(student)
    end_of_turn_id = student_end_of_turn_id(tokenizer)
    rows = [tokenize_group(row, tokenizer, cfg, end_of_turn_id) for row in from_arrow(batch)]
    return to_arrow(rows, arrow_schema(TokenisedGroup))


def training_contract(flags: list[dict[str, Any]], cfg: ExperimentConfig) -> dict[str, Any]:
    """What a run trains on, stated in result.json and the report (SPEC §5-6), from each tokenised
    group's `keep`, `val` and `truncated_responses`: groups trained on, held out (and the
    fraction), dropped by the K' keep rule, groups per step, and the responses max_seq_len cut."""
    train = [f for f in flags if f["keep"] and not f["val"]]
    val = [f for f in flags if f["keep"] and f["val"]]
    tc = cfg.train
    return {
        "train_groups": len(train), "val_groups": len(val), "val_fraction": tc.val_fraction,
        "groups_per_step": tc.groups_per_step, "responses_per_group": tc.responses_per_group,
        "dropped_groups": sum(not f["keep"] for f in flags), "max_seq_len": tc.max_seq_len,
        "truncated_responses": sum(f["truncated_responses"] for f in train),
        "truncated_groups": sum(f["truncated_responses"] > 0 for f in train),
        "val_truncated_responses": sum(f["truncated_responses"] for f in val),
        "val_truncated_groups": sum(f["truncated_responses"] > 0 for f in val),
    }


def train(cfg: ExperimentConfig, groups: str | Path, output: str | Path, *, student: str | None = None) -> dict[str, Any]:
    """Train a student on a groups table; returns the final metrics (also in the output)."""
    import ray
    import ray.train
    from ray.data.expressions import col
    from ray.train.torch import TorchTrainer

    out = TrainOutput(Path(output).resolve())
    out.folder.mkdir(parents=True, exist_ok=True)
    out.config.write_text(dump_config(cfg))
    student = student or cfg.student
    student = str(Path(student).resolve()) if Path(student).exists() else student

    table = ray.data.read_parquet(str(groups_folder(groups)))
    tokenized = table.map_batches(_tokenize_batch, fn_kwargs={"cfg": cfg, "student": student},
                                  batch_format="pyarrow", batch_size=64).materialize()
    data = training_contract(tokenized.select_columns(["keep", "val", "truncated_responses"]).take_all(), cfg)
    # `== True/False`: Ray Data expressions, not Python bools.
    train_ds = tokenized.filter(expr=(col("keep") == True) & (col("val") == False)).materialize()  # noqa: E712
    val_ds = tokenized.filter(expr=(col("keep") == True) & (col("val") == True)).materialize()  # noqa: E712
    tc = cfg.train
    dropped = (f", {data['dropped_groups']} dropped (no correct response in the first {tc.responses_per_group})"
               if tc.responses_per_group is not None else "")
    print(f"[train] {tc.mode}: {data['train_groups']} training groups, {data['val_groups']} validation groups "
          f"(val_fraction {tc.val_fraction}){dropped}; {tc.groups_per_step} groups per optimizer step; "
          f"{data['truncated_responses']} training responses cut at max_seq_len {tc.max_seq_len}; student {student}",
          flush=True)

    res = cfg.train.resources
    use_gpu = res.use_gpu if res.use_gpu is not None else ray.cluster_resources().get("GPU", 0) > 0
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "student": student},
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.train.num_workers, use_gpu=use_gpu, resources_per_worker={"CPU": res.cpus_per_worker}
        ),
        run_config=ray.train.RunConfig(
            storage_path=str(out.checkpoints.parent),
            name=out.checkpoints.name,
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
        if out.final.exists():
            shutil.rmtree(out.final)
        shutil.copytree(folder / HF_EXPORT, out.final)
        shutil.copy(folder / METRICS_FILE, out.metrics)
    # The last step's figures, less its per-step counts: the run's totals replace them.
    metrics = {k: v for k, v in (result.metrics or {}).items() if k not in ("groups", "truncated_responses")}
    metrics.update({**data, "mode": cfg.train.mode, "student": student})
    out.result.write_text(json.dumps(metrics, indent=2, default=str))
    return metrics
