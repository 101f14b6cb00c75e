"""Stage 2, distill: the driver side of training on Ray Train.

Reads the groups table with Ray Data, tokenises it there (CPU tasks), drops the groups the
`responses_per_group` keep rule rejects (counted), holds out validation groups (`val_fraction`,
by id hash — a stated choice, reported), counts the responses `max_seq_len` cuts, and runs
`train_loop` on a `TorchTrainer` (FSDP2, gloo on CPU, NCCL on GPU). Everything
a worker writes goes through Ray Train's storage (`OUTPUT/checkpoints`; OUTPUT may be a URI such
as `s3://bucket/run/train-sft`, `advdistill.storage`), so the same code works on a laptop and on a
cluster; at the end the driver copies the last checkpoint's transformers export to
`OUTPUT/final` and its metrics to `OUTPUT/metrics.jsonl` (`TrainOutput`), from wherever the
storage is. Rerunning with the same output continues from the latest checkpoint: the same run only
(`claim_training`, `advdistill.rerun`), from the newest complete checkpoint folder where Ray
Train's own record of them is broken (`train.recovery`). Before Ray Data reads the groups, every
shard is opened on the driver: footers, ids (none in two shards), pages (checksums verified).

Data ingest: no worker holds the whole table. The tokenised groups stay in Ray's object store;
each epoch is its own dataset, the groups in that epoch's order (`epoch_order`, a seeded
permutation of the id-sorted groups, as a `pos` column and a distributed sort), streamed to the
workers with Ray Data's `streaming_split` (`EpochSplits`: no truncation, order preserved). Which
worker receives which row is Ray Data's business; the loop (`train.loop.StepReader`) gathers
each optimizer step's groups from all workers' streams (one small collective per step) and runs
exactly the micro-batches it always ran, so order, results and mid-epoch resume are the same as
when every worker read everything.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import pyarrow as pa

from advdistill.config import ExperimentConfig, dump_config
from advdistill.curate.store import (BadShard, CurateOutput, DuplicateGroups, GroupsTable,  # noqa: F401 - re-exported
                                     open_groups, shard_files)
from advdistill.fingerprint import train_fingerprint
from advdistill.rerun import claim
from advdistill.schema import TokenisedGroup, arrow_schema, from_arrow, to_arrow
from advdistill.storage import PathLike, copy_tree, filesystem, local_model, location, resolved
from advdistill.train.checkpointing import dtype_name, export_dtype
from advdistill.train.collate import student_end_of_turn_id, tokenize_group
from advdistill.train.loop import HF_EXPORT, METRICS_FILE, VAL_DATASET, injected_failure_step, train_loop
from advdistill.train.recovery import recover


class TrainOutput:
    """A training run's folder (SPEC §9b)."""

    def __init__(self, folder: str | PathLike):
        self.folder = location(folder)
        self.checkpoints = self.folder / "checkpoints"  # Ray Train's storage: sharded, resumable
        self.final = self.folder / "final"  # a transformers folder with the tokenizer
        self.metrics = self.folder / "metrics.jsonl"  # one line per optimizer step
        self.result = self.folder / "result.json"  # the last step's figures and the training contract
        self.config = self.folder / "config.yaml"

    def is_complete(self) -> bool:
        return self.final.is_dir() and self.result.is_file()

    def owned(self) -> list[PathLike]:
        """What a training run writes here (what `--restart` removes, `advdistill.rerun`)."""
        return [self.checkpoints, self.final, self.metrics, self.result, self.config]


def open_training_groups(path: str | PathLike, *, pages: bool = False) -> GroupsTable:
    """The groups table of a curate output folder or of its `groups/` folder (a path or a URI),
    opened before any worker starts: every shard's footer and ids read (`curate.store.open_groups`:
    `BadShard`, `DuplicateGroups`); `pages`: every page read and verified too (one pass over the
    table on the driver)."""
    path = location(path)
    folder = CurateOutput(path).groups if CurateOutput(path).groups.is_dir() else path
    if not shard_files(folder):
        raise FileNotFoundError(f"no groups table (*.parquet) in {folder}")
    return open_groups(folder, pages=pages)


def groups_folder(path: str | PathLike) -> PathLike:
    """Accept the curate output folder or its `groups/` folder; checked as `open_training_groups`."""
    return open_training_groups(path).folder


def claim_training(cfg: ExperimentConfig, groups: str | PathLike, output: str | PathLike, *,
                   student: str | None = None, restart: bool = False,
                   pages: bool = False) -> tuple[TrainOutput, GroupsTable, str]:
    """Before Ray starts: open the groups table (`pages`: verify every page too), then make
    `output` this run's (`advdistill.rerun`: resume the same run, refuse another naming the fields
    that differ, or `restart`). Returns the output, the table and the student, resolved."""
    table = open_training_groups(groups, pages=pages)
    student = student or cfg.student
    student = str(Path(student).resolve()) if Path(student).exists() else student
    out = TrainOutput(resolved(output))
    claim(out.folder, train_fingerprint(cfg, student, table.identity), out.owned, restart=restart)
    return out, table, student


@lru_cache(maxsize=4)
def _tokenizer(student: str):
    from transformers import AutoTokenizer  # transformers: only for the student's tokenizer

    return AutoTokenizer.from_pretrained(local_model(student, weights=False))


def _tokenize_batch(batch: pa.Table, cfg: ExperimentConfig, student: str) -> pa.Table:
    tokenizer = _tokenizer(student)
    end_of_turn_id = student_end_of_turn_id(tokenizer)
    rows = [tokenize_group(row, tokenizer, cfg, end_of_turn_id) for row in from_arrow(batch)]
    return to_arrow(rows, arrow_schema(TokenisedGroup))


MAX_SKIPPED_LISTED = 100  # skipped groups listed by id in result.json (all are counted)


def training_contract(flags: list[dict[str, Any]], cfg: ExperimentConfig) -> dict[str, Any]:
    """What a run trains on, stated in result.json and the report (SPEC §5-6), from each tokenised
    group's `keep`, `val` and `truncated_responses`: groups trained on, held out (and the
    fraction), dropped by the K' keep rule, groups per step, and the responses max_seq_len cut."""
    train = [f for f in flags if f["keep"] and not f["val"]]
    val = [f for f in flags if f["keep"] and f["val"]]
    skipped = [f for f in flags if f.get("skipped")]
    tc = cfg.train
    return {
        "train_groups": len(train), "val_groups": len(val), "val_fraction": tc.val_fraction,
        "groups_per_step": tc.groups_per_step, "responses_per_group": tc.responses_per_group,
        # the optimizer's settings, so the report can show that compared runs had the same ones
        "lr": tc.learning_rate, "epochs": tc.epochs, "optimizer": f"AdamW, weight decay {tc.weight_decay:g}, "
                                                     f"warm-up {tc.warmup_ratio:g}, cosine",
        "dropped_groups": sum(not f["keep"] and not f.get("skipped") for f in flags), "max_seq_len": tc.max_seq_len,
        # groups not trained on at all (the prompt alone fills max_seq_len), with their reasons
        "skipped_groups": len(skipped),
        "skipped": [{"id": f.get("id"), "reason": f["skipped"]} for f in skipped[:MAX_SKIPPED_LISTED]],
        "truncated_responses": sum(f["truncated_responses"] for f in train),
        "truncated_groups": sum(f["truncated_responses"] > 0 for f in train),
        "val_truncated_responses": sum(f["truncated_responses"] for f in val),
        "val_truncated_groups": sum(f["truncated_responses"] > 0 for f in val),
    }


def train(cfg: ExperimentConfig, groups: str | PathLike, output: str | PathLike, *,
          student: str | None = None, step_logger: dict[str, str] | None = None,
          restart: bool = False) -> dict[str, Any]:
    """Train a student on a groups table; returns the final metrics (also in the output).
    `step_logger` ({uri, run_id}, `advdistill.run.tracking`): rank 0 logs every step to that MLflow run.
    An output of another run is refused before Ray starts, unless `restart` (`claim_training`)."""
    import ray  # Ray Data and Ray Train: the run folders and the report read TrainOutput without Ray
    import ray.train
    from ray.data.expressions import col
    from ray.train.torch import TorchTrainer

    from advdistill.train.ingest import EpochSplits, epoch_datasets, epochs_to_run

    out, groups_table, student = claim_training(cfg, groups, output, student=student, restart=restart, pages=True)
    out.config.write_text(dump_config(cfg))
    # Ray Train's record of its checkpoints, checked before it reads it (train.recovery).
    recovered = recover(out.checkpoints)

    # Ray gets the file system itself (credentials, endpoint), not just a URI to re-resolve.
    groups_fs, groups_path = filesystem(groups_table.folder)
    table = ray.data.read_parquet(groups_path, filesystem=groups_fs)
    storage_fs, storage_path = filesystem(out.folder)
    tokenized = table.map_batches(_tokenize_batch, fn_kwargs={"cfg": cfg, "student": student},
                                  batch_format="pyarrow", batch_size=64).materialize()
    data = training_contract(tokenized.select_columns(["id", "keep", "val", "truncated_responses", "skipped"]).take_all(),
                             cfg)
    # `== True/False`: Ray Data expressions, not Python bools.
    train_ds = tokenized.filter(expr=(col("keep") == True) & (col("val") == False))  # noqa: E712
    val_ds = tokenized.filter(expr=(col("keep") == True) & (col("val") == True))  # noqa: E712
    tc = cfg.train
    if not data["train_groups"]:
        raise ValueError("no training groups (all held out for validation, dropped by the keep rule or skipped?)")
    # Only the ids come to the driver (to number the groups); the rows stream to the workers.
    ids = [row["id"] for row in train_ds.select_columns(["id"]).take_all()]
    datasets = epoch_datasets(train_ds, ids, epochs_to_run(len(ids), tc.groups_per_step, tc.epochs, tc.max_steps),
                              tc.seed)
    dropped = (f", {data['dropped_groups']} dropped (no correct response in the first {tc.responses_per_group})"
               if tc.responses_per_group is not None else "")
    print(f"[train] {tc.method}: {data['train_groups']} training groups, {data['val_groups']} validation groups "
          f"(val_fraction {tc.val_fraction}){dropped}; {tc.groups_per_step} groups per optimizer step; "
          f"{data['truncated_responses']} training responses cut at max_seq_len {tc.max_seq_len}; student {student}",
          flush=True)
    if data["skipped_groups"]:
        print(f"[train] {data['skipped_groups']} groups skipped, e.g. {data['skipped'][0]['id']}: "
              f"{data['skipped'][0]['reason']} (all listed in result.json)", flush=True)

    res = cfg.train.resources
    use_gpu = res.use_gpu if res.use_gpu is not None else ray.cluster_resources().get("GPU", 0) > 0
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "student": student,
                           "train_groups": data["train_groups"], "val_groups": data["val_groups"],
                           "step_logger": step_logger, "fail_at_step": injected_failure_step(),
                           "recovered_checkpoint": recovered.for_workers() if recovered else None},
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.train.num_workers, use_gpu=use_gpu,
            resources_per_worker={"CPU": res.cpus_per_worker, **res.custom_resources},
        ),
        run_config=ray.train.RunConfig(
            # A local folder or a URI (s3://…): Ray Train writes checkpoints there from every worker.
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            name=out.checkpoints.name,
            failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.train.checkpoints_to_keep),
        ),
        datasets={**datasets, VAL_DATASET: val_ds},
        # Each worker streams its share of every epoch, in order (train.ingest, train.loop.StepReader).
        dataset_config=EpochSplits(),
    )
    result = trainer.fit()
    if result.checkpoint is not None:
        checkpoint = (result.checkpoint.filesystem, result.checkpoint.path)
    elif recovered is not None:  # resumed at the last step: nothing left to run, the recovered one is final
        checkpoint = recovered.for_workers()
    else:
        raise RuntimeError("training finished without a checkpoint")
    # The checkpoint is on Ray Train's storage (shared: any node may have written it); copied
    # from there, file system to file system, not through a node's local disk.
    copy_tree((checkpoint[0], f"{checkpoint[1]}/{HF_EXPORT}"), out.final)
    with checkpoint[0].open_input_stream(f"{checkpoint[1]}/{METRICS_FILE}") as stream:
        out.metrics.write_bytes(stream.read())
    # The last step's figures, less its per-step counts: the run's totals replace them.
    last = result.metrics or _last_step(checkpoint)
    metrics = {k: v for k, v in last.items() if k not in ("groups", "truncated_responses")}
    metrics.setdefault("export_dtype", dtype_name(export_dtype(tc.export_dtype, tc.bf16, use_gpu)))
    metrics.update({**data, "mode": cfg.train.method, "student": student})
    out.result.write_text(json.dumps(metrics, indent=2, default=str))
    return metrics


def _last_step(checkpoint: tuple[Any, str]) -> dict[str, Any]:
    """The last step's figures from a checkpoint's metrics history (a recovered run that had no
    step left to run reported none)."""
    fs, path = checkpoint
    with fs.open_input_stream(f"{path}/{METRICS_FILE}") as stream:
        lines = [line for line in stream.read().decode().splitlines() if line.strip()]
    return json.loads(lines[-1]) if lines else {}
