"""Driver side of training ingest: the per-epoch datasets the Ray Train workers stream.

Design (the worker side is `train.loop.StepReader`):

- The tokenised groups are a Ray dataset in the object store (spread over the nodes), never a
  table in one process. The driver holds only the training groups' ids (to number them).
- Epoch `e` is its own dataset, `train-e`: every training group with its position `pos` in that
  epoch's order — `epoch_order(n, e, seed)`, the same seeded permutation of the id-sorted groups
  as always — and sorted by `pos` (Ray Data's distributed sort).
- `EpochSplits` hands each worker a `streaming_split` of it, order preserved and without
  truncation (Ray Train's default split, `equal=True`, drops rows to even out the shards). The
  split decides which worker *reads* which row, by its own load balancing.
- Which worker *trains* on which group stays what it was: optimizer step `s` is positions
  `[s·G, (s+1)·G)`, and rank `r` runs every W-th of them. Each worker reads its stream up to the
  end of step `s` (its rows arrive in order), one all-reduce confirms that the step's G rows are
  all in hand somewhere, and one all-gather of those rows (G groups, far less than a step's
  gradient all-reduce) gives every worker the step. Memory per worker is a step and a block,
  not the table.
- Resume (a rerun, or Ray Train restarting the worker group after a lost node): the workers skip
  epochs before the checkpoint's and, in its epoch, drop rows whose `pos` precedes the
  checkpoint's step as they stream past, so the next micro-batches are exactly those an
  uninterrupted run would have run.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import ray.train

from advdistill.train.loop import POSITION, epoch_dataset_name, epoch_order, steps_per_epoch


def _add_position(batch: pa.Table, index: dict[str, int], position: np.ndarray) -> pa.Table:
    ids = batch.column("id").to_pylist()
    return batch.append_column(POSITION, pa.array(position[[index[i] for i in ids]], pa.int64()))


def epoch_datasets(train_ds: "ray.data.Dataset", ids: list[str], epochs: int, seed: int) -> dict[str, "ray.data.Dataset"]:
    """`{"train-e": dataset}` for the epochs to run: each training group with its `pos` in epoch
    e's order, sorted by it. `ids` are the training groups' ids (any order)."""
    ids = sorted(ids)
    index = {group_id: i for i, group_id in enumerate(ids)}
    out = {}
    for epoch in range(epochs):
        position = np.empty(len(ids), dtype=np.int64)
        position[epoch_order(len(ids), epoch, seed)] = np.arange(len(ids))
        out[epoch_dataset_name(epoch)] = train_ds.map_batches(
            _add_position, fn_kwargs={"index": index, "position": position}, batch_format="pyarrow",
            batch_size=None).sort(POSITION)
    return out


def epochs_to_run(n_groups: int, groups_per_step: int, epochs: int, max_steps: int | None) -> int:
    """Epochs that have at least one step to run (`max_steps` may end training early)."""
    if max_steps is None:
        return epochs
    return min(epochs, math.ceil(max_steps / max(1, steps_per_epoch(n_groups, groups_per_step))))


class EpochSplits(ray.train.DataConfig):
    """Every dataset streamed to the workers with `streaming_split(W, equal=False)`, in order:
    no row is dropped to even out the shards, and each worker's rows come in the dataset's
    order (what `train.loop.StepReader` relies on to know when it has read a step)."""

    def configure(self, datasets: dict[str, Any], world_size: int, worker_handles, worker_node_ids,
                  **kwargs) -> list[dict[str, Any]]:
        output: list[dict[str, Any]] = [{} for _ in range(world_size)]
        for name, ds in datasets.items():
            ds = ds.copy(ds)
            options = self._resolve_execution_options(name)
            options.preserve_order = True
            ds.context.execution_options = options
            for rank, split in enumerate(ds.streaming_split(world_size, equal=False)):
                output[rank][name] = split
        return output
