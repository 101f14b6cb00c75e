"""The training loop each Ray Train worker runs (SPEC §6, paper Appendix B).

Data order is deterministic: each epoch is a seeded permutation of the id-sorted training groups
(`epoch_order`), cut into optimizer steps of `groups_per_step` groups whatever the number of
workers W; worker r takes every W-th group of a step, one group per micro-batch. The last step of
an epoch takes the remainder (no group is skipped); where the remainder does not divide by W, the
workers short of a group run one padding micro-batch of weight 0 — with FSDP every worker must
run the same number of forward/backward passes (they are collectives). A full step never pads:
the config refuses a `groups_per_step` that is not a multiple of W (`TrainConfig`). The gradient
of a step is the mean over its groups. A resumed run — from a checkpoint's global step — replays exactly the
same micro-batches as an uninterrupted one.

No worker holds the table: each reads its streaming-split shard of the epoch's dataset (rows in
epoch order, `pos` their position; `train.ingest`), and `StepReader` assembles each step's
groups from all the shards with one all-reduce and one all-gather of that step's rows.

Fault injection, for tests only (recovery from checkpoints; not a config field): with
`ADVDISTILL_FAIL_AT_STEP=N` in the environment of the process that calls `trainer.train`, every
worker raises `InjectedFailure` once, at optimizer step N of an attempt that did not resume. The
driver reads it (`injected_failure_step`) and hands it to the workers in the loop config, since a
Ray worker's environment is its cluster's, not the driver's.
"""

from __future__ import annotations

import math
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from advdistill.config import ExperimentConfig
from advdistill.methods import get_method
from advdistill.storage import local_model
from advdistill.run.tracking import StepLogger
from advdistill.train.attention import resolve_packed_attention
from advdistill.train.group_batches import group_batch, group_tokens, model_inputs, packed_group_batch
from advdistill.train.checkpointing import (HF_EXPORT, METRICS_FILE, TRAINER_STATE, dtype_name, export_dtype,  # noqa: F401
                                            export_hf, restore_checkpoint, save_checkpoint)
from advdistill.train.lora import apply_lora
from advdistill.train.model import ResponseLogProbs, enable_activation_checkpointing, param_groups, shard_fsdp2

POSITION = "pos"  # a group's position in its epoch's order (the per-epoch datasets' sort key)
VAL_DATASET = "val"


def epoch_dataset_name(epoch: int) -> str:
    return f"train-{epoch}"


FAIL_AT_STEP_ENV = "ADVDISTILL_FAIL_AT_STEP"


class InjectedFailure(RuntimeError):
    """Raised at the step `ADVDISTILL_FAIL_AT_STEP` names, to exercise recovery from checkpoints."""


def injected_failure_step() -> int | None:
    """The step `ADVDISTILL_FAIL_AT_STEP` names (tests' fault injection), or None."""
    value = os.environ.get(FAIL_AT_STEP_ENV, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{FAIL_AT_STEP_ENV} must be a step number >= 1, got {value!r}")
    return int(value)


def epoch_order(n_groups: int, epoch: int, seed: int) -> list[int]:
    order = list(range(n_groups))
    random.Random(seed * 100_003 + epoch).shuffle(order)
    return order


def steps_per_epoch(n_groups: int, groups_per_step: int) -> int:
    """Optimizer steps per epoch: every group once, the last step taking the remainder."""
    return math.ceil(n_groups / groups_per_step)


def step_groups(order: list[int], step_in_epoch: int, groups_per_step: int) -> list[int]:
    """The groups (indices) of one optimizer step, in the epoch's order."""
    return order[step_in_epoch * groups_per_step : (step_in_epoch + 1) * groups_per_step]


def worker_micro_batches(groups: list[int], rank: int, world: int) -> list[tuple[int, float]]:
    """(group, weight) of each micro-batch worker `rank` runs for a step's `groups`: every W-th
    group with weight 1, then padding — the step's first group with weight 0 — so that every
    worker runs ceil(len(groups) / W) forward/backward passes (FSDP's collectives)."""
    passes = math.ceil(len(groups) / world)
    mine = [(g, 1.0) for g in groups[rank::world]]
    return mine + [(groups[0], 0.0)] * (passes - len(mine))


def make_batch(group: dict[str, Any], cfg: ExperimentConfig, pad_id: int) -> dict[str, torch.Tensor]:
    """A group's tensors in the configured layout (separate sequences or shared-prefix packed)."""
    return packed_group_batch(group, pad_id) if cfg.train.shared_prefix_packing else group_batch(group, pad_id)


def packed_attention(cfg: ExperimentConfig, device_type: str) -> str:
    """The attention backend of packed groups (`train.packed_attention`, `auto` by device); the
    separate layout always runs the model's own attention."""
    if not cfg.train.shared_prefix_packing:
        return "dense"
    return resolve_packed_attention(cfg.train.packed_attention, device_type)


def loss_terms(model: ResponseLogProbs, batch: dict[str, torch.Tensor], cfg: ExperimentConfig) -> dict[str, torch.Tensor]:
    """The training method's terms on one group (`advdistill.methods`); "loss" is minimised."""
    logprobs, mask = model(**model_inputs(batch))
    return get_method(cfg.train.method).loss(logprobs, mask, batch, cfg.train.loss)


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def shard_rows(shard) -> list[dict[str, Any]]:
    """All rows of this worker's shard of a (small) dataset, e.g. its share of the validation set."""
    if shard is None:
        return []
    return [row for batch in shard.iter_batches(batch_format="pyarrow", batch_size=None) for row in batch.to_pylist()]


class StepReader:
    """The optimizer steps of one epoch, read from this worker's streaming-split shard of the
    epoch's dataset (rows sorted by `pos`, shared among the workers by Ray Data as it likes).

    `step(s)` returns the groups at positions [s·G, min((s+1)·G, n)) in order, on every worker:
    the worker reads its stream until it passes the step (or ends), an all-reduce checks that the
    step's rows are all in hand (else every worker reads on), and an all-gather hands every worker
    the step. Rows before the first step asked for (a resumed epoch) are dropped as they pass.
    Every call is a collective: all workers call `step` with the same `s`."""

    def __init__(self, shard, n_groups: int, groups_per_step: int, device: torch.device):
        self._batches = iter(shard.iter_batches(batch_format="pyarrow", batch_size=None)) if shard is not None else iter(())
        self.n_groups, self.groups_per_step, self.device = n_groups, groups_per_step, device
        self._held: list[dict[str, Any]] = []
        self._ended = False

    def _read(self, low: int) -> None:
        try:
            batch = next(self._batches)
        except StopIteration:
            self._ended = True
            return
        self._held += [row for row in batch.to_pylist() if row[POSITION] >= low]

    def step(self, step_in_epoch: int) -> list[dict[str, Any]]:
        import torch.distributed as dist  # torch.distributed: only inside a worker's process group

        low = step_in_epoch * self.groups_per_step
        high = min(low + self.groups_per_step, self.n_groups)
        self._held = [row for row in self._held if row[POSITION] >= low]
        while not self._ended and not any(row[POSITION] >= high for row in self._held):
            self._read(low)
        while True:
            mine = [row for row in self._held if row[POSITION] < high]
            have, ended = _all_reduce_sum(torch.tensor([len(mine), float(self._ended)], dtype=torch.float64), self.device)
            if int(have) == high - low:
                break
            if int(ended) == dist.get_world_size():
                raise RuntimeError(f"the epoch's data ended with {int(have)} of the {high - low} groups of step "
                                   f"{step_in_epoch} (positions {low}-{high - 1})")
            self._read(low)
        gathered: list[list[dict[str, Any]]] = [[] for _ in range(dist.get_world_size())]
        dist.all_gather_object(gathered, mine)
        self._held = [row for row in self._held if row[POSITION] >= high]
        return sorted((row for rows in gathered for row in rows), key=lambda row: row[POSITION])


def train_loop(loop_config: dict[str, Any]) -> None:
    """Entry point of each Ray Train worker."""
    import ray.train  # Ray Train and transformers: only in a worker; the loop's helpers import without them
    import ray.train.torch
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM, get_cosine_schedule_with_warmup

    cfg = ExperimentConfig.model_validate(loop_config["cfg"])
    student: str = loop_config["student"]
    tc = cfg.train
    terms = get_method(tc.method).terms  # what each step reports, "loss" first
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    on_gpu = device.type == "cuda"
    final_dtype = export_dtype(tc.export_dtype, tc.bf16, on_gpu)  # final/'s weights (train.export_dtype)
    torch.manual_seed(tc.seed)

    student = local_model(student)  # a folder on a URI (an earlier run's final/) is fetched to this node
    n_train, n_val = loop_config["train_groups"], loop_config["val_groups"]
    n_steps_epoch = steps_per_epoch(n_train, tc.groups_per_step)
    if n_steps_epoch == 0:
        raise ValueError("no training groups (all held out for validation or dropped by the keep rule?)")
    total_steps = n_steps_epoch * tc.epochs
    if tc.max_steps is not None:
        total_steps = min(total_steps, tc.max_steps)

    lm = AutoModelForCausalLM.from_pretrained(student, dtype=torch.float32)
    lm.config.use_cache = False
    if tc.lora.r:  # before sharding: FSDP2 shards the adapters with their layers
        apply_lora(lm, tc.lora)
    if tc.activation_checkpointing:
        enable_activation_checkpointing(lm)  # before sharding: FSDP2's hooks then run inside each checkpoint
    model = ResponseLogProbs(lm, chunk_size=tc.loss.chunk_size, packed_attention=packed_attention(cfg, device.type))
    model = shard_fsdp2(model.to(device), device.type, world, bf16=tc.bf16 and on_gpu)
    model.train()  # from_pretrained returns eval mode, where transformers skips activation checkpointing
    optimizer = torch.optim.AdamW(param_groups(model, tc.weight_decay), lr=tc.learning_rate)
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(tc.warmup_ratio * total_steps), total_steps)
    pad_id = lm.config.pad_token_id if lm.config.pad_token_id is not None else 0

    global_step, history, resumed = 0, [], False
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and loop_config.get("recovered_checkpoint"):
        # Ray Train's snapshot was broken (train.recovery): the newest complete checkpoint folder,
        # until this run reports one of its own (a restarted worker group then gets that).
        filesystem, path = loop_config["recovered_checkpoint"]
        checkpoint = ray.train.Checkpoint(path, filesystem=filesystem)
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            global_step, history = restore_checkpoint(Path(folder), model, optimizer, scheduler)
        resumed = True
        if rank == 0:
            print(f"[train] resumed from step {global_step}", flush=True)
    resumed_from = global_step

    tracked = None
    if rank == 0 and loop_config.get("step_logger"):
        tracked = StepLogger(**loop_config["step_logger"])

    def report(metrics: dict[str, Any], *, save: bool, export: bool) -> None:
        history.append(metrics)  # every step goes to metrics.jsonl; Ray hears every report_every-th
        if tracked is not None:
            tracked.log(metrics, step=metrics["step"])
        if not save:
            if global_step % tc.report_every == 0:
                ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as tmp:
            save_checkpoint(Path(tmp), model, optimizer, scheduler, global_step, history, rank)
            if export:
                export_hf(Path(tmp) / HF_EXPORT, model, lm, student, rank, final_dtype, tc.lora)
                metrics = {**metrics, "export_dtype": dtype_name(final_dtype)}  # reaches result.json
            dist.barrier()
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    val_loss = None
    tokens_seen = history[-1]["tokens"] if history else 0
    start_epoch = global_step // n_steps_epoch
    for epoch in range(start_epoch, tc.epochs):
        if global_step >= total_steps:
            break
        reader = StepReader(ray.train.get_dataset_shard(epoch_dataset_name(epoch)), n_train, tc.groups_per_step, device)
        first = global_step - epoch * n_steps_epoch
        for step_in_epoch in range(first, n_steps_epoch):
            t0 = time.perf_counter()
            # Summed on the device (no host sync per micro-batch): the method's terms, tokens,
            # responses cut at max_seq_len, over this worker's real groups.
            sums = torch.zeros(len(terms) + 2, device=device, dtype=torch.float64)
            groups = reader.step(step_in_epoch)  # the step's groups in epoch order, on every worker
            micro = worker_micro_batches(groups, rank, world)
            for i, (group, weight) in enumerate(micro):
                # Reduce-scatter gradients once per optimizer step, not per micro-batch.
                model.set_requires_gradient_sync(i == len(micro) - 1)
                values = loss_terms(model, _to_device(make_batch(group, cfg, pad_id), device), cfg)
                # FSDP averages gradients over the W workers, so each worker scales its sum by
                # W / len(groups): the step's gradient is the mean over its groups.
                (values["loss"] * (weight * world / len(groups))).backward()
                if weight:  # a padding micro-batch adds nothing to the step's figures
                    sums += torch.cat([
                        torch.stack([values[name] for name in terms]).detach().double(),
                        sums.new_tensor([group_tokens(group, tc.shared_prefix_packing), group["truncated_responses"]]),
                    ])
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            global_step += 1

            totals = _all_reduce_sum(sums, device)
            seconds = time.perf_counter() - t0
            n = len(groups)
            step_tokens, step_truncated = totals[len(terms)], totals[len(terms) + 1]
            tokens_seen += int(step_tokens)
            metrics = {
                "step": global_step, "epoch": epoch + (step_in_epoch + 1) / n_steps_epoch, "groups": n,
                **{name: total / n for name, total in zip(terms, totals)},
                "grad_norm": float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm),
                "lr": scheduler.get_last_lr()[0], "tokens_per_s": step_tokens / seconds, "tokens": tokens_seen,
                # responses of this step's groups that max_seq_len cut (SPEC §6)
                "truncated_responses": int(step_truncated),
                "step_seconds": seconds,
                # the checkpoint step this worker group started from (0: a fresh start); a step
                # after a lost worker or node says where the restarted group picked up
                "resumed_from": resumed_from,
            }
            if loop_config.get("fail_at_step") == global_step and not resumed:
                raise InjectedFailure(f"injected failure at step {global_step} ({FAIL_AT_STEP_ENV})")
            epoch_end = step_in_epoch == n_steps_epoch - 1 or global_step >= total_steps
            if n_val and (global_step % tc.val_every == 0 or epoch_end):
                val_loss = _validate(model, ray.train.get_dataset_shard(VAL_DATASET), groups[0], cfg, device, pad_id)
                metrics["val_loss"] = val_loss
            if rank == 0 and (global_step % tc.report_every == 0 or "val_loss" in metrics):
                extra = f" val {val_loss:.4f}" if "val_loss" in metrics else ""
                figures = " ".join(f"{name} {metrics[name]:.4f}" for name in terms)
                print(f"[train] step {global_step}/{total_steps} epoch {metrics['epoch']:.2f} {figures}"
                      f" lr {metrics['lr']:.2e} {metrics['tokens_per_s']:,.0f} tok/s{extra}", flush=True)
            save = epoch_end or global_step % tc.checkpoint_every == 0
            # The transformers export is written once, with the run's last checkpoint (what final/ is).
            report(metrics, save=save, export=global_step >= total_steps)
            if global_step >= total_steps:
                break


def _all_reduce_sum(values: torch.Tensor, device: torch.device) -> list[float]:
    import torch.distributed as dist  # torch.distributed: only inside a worker's process group

    t = values.to(device=device, dtype=torch.float64)
    dist.all_reduce(t)
    return t.cpu().tolist()


def _all_max(value: float, device: torch.device) -> float:
    import torch.distributed as dist  # torch.distributed: only inside a worker's process group

    t = torch.tensor([value], device=device, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


@torch.no_grad()
def _validate(model, shard, fallback: dict[str, Any], cfg, device, pad_id) -> float:
    """Mean loss over the held-out groups, each worker on its streaming-split share of them.
    Every worker runs the same number of forwards (FSDP all-gathers are collectives); a worker
    short of groups repeats one (or, with none, `fallback`) with weight 0."""
    mine = shard_rows(shard)
    per_rank = int(_all_max(len(mine), device))
    total = torch.zeros(2, dtype=torch.float64)
    for i in range(per_rank):
        weight = 1.0 if i < len(mine) else 0.0
        group = mine[i] if i < len(mine) else (mine[0] if mine else fallback)
        loss = loss_terms(model, _to_device(make_batch(group, cfg, pad_id), device), cfg)["loss"]
        total += torch.tensor([weight * loss.item(), weight], dtype=torch.float64)
    loss_sum, count = _all_reduce_sum(total, device)
    return loss_sum / max(count, 1.0)
