"""Bad data fails early, named (issue 30.3): an id in two shards, a shard without a footer and a
shard with a corrupt page are one error naming the files before any worker starts; a torn Ray
Train snapshot does not block resuming from the checkpoint folders beside it (the real torn
file after a real run: tests/test_train.py)."""

from __future__ import annotations

import json
import runpy

import pyarrow.parquet as pq
import pytest
import torch

from advdistill.curate.store import (BadShard, CurateOutput, DuplicateGroups, open_groups, shard_files, verify_pages,
                                     write_shard)
from advdistill.schema import CuratedGroup, arrow_schema, from_arrow, to_arrow
from advdistill.train.checkpointing import METRICS_FILE, SHARDED, TRAINER_STATE
from advdistill.train.recovery import SNAPSHOT, checkpoint_step, newest_complete_checkpoint, recover

from conftest import REPO, TINY_STUDENT
from groups_fixture import write_groups

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")  # DCP saving in one process


def corrupt_pages(shard, column: str = "responses") -> None:
    """Flip one bit inside one column's data pages: the footer and the ids still read, and so does
    the page itself, wrongly, unless its checksum is verified."""
    metadata = pq.ParquetFile(shard).metadata
    chunk = next(metadata.row_group(0).column(i) for i in range(metadata.num_columns)
                 if metadata.row_group(0).column(i).path_in_schema.startswith(column))
    data = bytearray(shard.read_bytes())
    data[chunk.data_page_offset + chunk.total_compressed_size - 30] ^= 0x01
    shard.write_bytes(bytes(data))


# ------------------------------------------------------------------ duplicate ids across shards


@pytest.fixture
def two_curations_in_one_folder(tmp_path, tiny_tokenizer, tiny_cfg):
    """One curation's shard, and a second run's shard holding 3 of the same ids (other responses)."""
    folder = write_groups(tmp_path / "curate", tiny_tokenizer, tiny_cfg, n=8)
    first = shard_files(CurateOutput(folder).groups)[0]
    rows = from_arrow(pq.read_table(first))[:3] + [dict(from_arrow(pq.read_table(first))[0], id="only-in-second")]
    second = write_shard(CurateOutput(folder).groups, to_arrow([{**r, "teacher": "another"} for r in rows],
                                                               arrow_schema(CuratedGroup)))
    return folder, first, second


def test_an_id_in_two_shards_is_an_error_naming_both(two_curations_in_one_folder):
    folder, first, second = two_curations_in_one_folder
    with pytest.raises(DuplicateGroups) as err:
        open_groups(CurateOutput(folder).groups)
    message = str(err.value)
    assert first.name in message and second.name in message and "3 ids are in more than one shard" in message


def test_training_on_duplicated_groups_stops_before_ray_with_one_line(two_curations_in_one_folder, tiny_cfg, tmp_path):
    folder, first, second = two_curations_in_one_folder
    from advdistill.train.trainer import train

    with pytest.raises(DuplicateGroups, match=second.name):  # in the fast tier, reaching Ray would fail otherwise
        train(tiny_cfg, folder, tmp_path / "train")
    main = runpy.run_path(str(REPO / "ray_jobs" / "train.py"))["main"]
    with pytest.raises(SystemExit) as exit_:
        main(["--groups", str(folder), "--output", str(tmp_path / "train"), "--set", f"student={TINY_STUDENT}"])
    message = str(exit_.value.code)
    assert message.startswith("error: group id ") and "\n" not in message and first.name in message


# ------------------------------------------------------------------ corrupt pages


def test_a_shard_with_corrupt_pages_fails_training_before_ray_naming_it(tmp_path, tiny_tokenizer, tiny_cfg):
    """Shards carry page checksums; training reads every page of every shard, verified, before Ray
    Data does (whose error names no file and whose reader skips the checksums)."""
    from advdistill.train.trainer import train

    folder = write_groups(tmp_path / "curate", tiny_tokenizer, tiny_cfg, n=8)
    write_groups(tmp_path / "curate", tiny_tokenizer, tiny_cfg, n=4, seed=3)  # a second, healthy shard
    files = shard_files(CurateOutput(folder).groups)
    assert len(files) == 2
    verify_pages(files)
    bad = files[1]
    corrupt_pages(bad)
    assert open_groups(CurateOutput(folder).groups).rows[1] > 0  # footer and ids still read
    assert pq.read_table(bad).num_rows > 0  # and, without its checksums, the corrupt page too
    with pytest.raises(BadShard) as err:
        open_groups(CurateOutput(folder).groups, pages=True)
    assert bad.name in str(err.value) and files[0].name not in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(BadShard, match=bad.name):  # in the fast tier, reaching Ray would fail otherwise
        train(tiny_cfg, folder, tmp_path / "train")


# ------------------------------------------------------------------ Ray Train's snapshot


def save_checkpoint(folder, step: int) -> None:
    """A checkpoint folder as the training loop writes it: DCP shards, trainer state, metrics."""
    import torch.distributed.checkpoint as dcp

    folder.mkdir(parents=True)
    dcp.save({"model": {"w": torch.full((8, 8), float(step))}, "optim": {"m": torch.zeros(8)}},
             checkpoint_id=str(folder / SHARDED))
    (folder / TRAINER_STATE).write_text(json.dumps({"global_step": step, "scheduler": {}}))
    (folder / METRICS_FILE).write_text("".join(json.dumps({"step": s}) + "\n" for s in range(1, step + 1)))


def snapshot(checkpoints, names: list[str]) -> str:
    results = [{"checkpoint_dir_name": n, "metrics": {}} for n in names]
    text = json.dumps({"ray_version": "2.60.0", "checkpoint_results": results, "checkpoint_report_indices": [0] * len(names),
                       "latest_checkpoint_result": results[-1] if results else None, "pending_training_results": []})
    (checkpoints / SNAPSHOT).write_text(text)
    return text


def test_a_checkpoint_is_complete_only_with_every_shard_byte_its_index_names(tmp_path):
    save_checkpoint(tmp_path / "checkpoint_a", 4)
    assert checkpoint_step(tmp_path / "checkpoint_a") == 4
    shard = next((tmp_path / "checkpoint_a" / SHARDED).glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:-10])  # an upload cut short
    assert checkpoint_step(tmp_path / "checkpoint_a") is None
    save_checkpoint(tmp_path / "checkpoint_b", 2)
    (tmp_path / "checkpoint_b" / TRAINER_STATE).unlink()
    assert checkpoint_step(tmp_path / "checkpoint_b") is None


def test_a_torn_snapshot_is_set_aside_and_the_newest_complete_checkpoint_resumes(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    for name, step in [("checkpoint_2026-12-07_10-00-00.000000", 2), ("checkpoint_2026-12-07_10-00-05.000000", 4),
                       ("checkpoint_2026-12-07_10-00-09.000000", 6)]:
        save_checkpoint(checkpoints / name, step)
    newest = checkpoints / "checkpoint_2026-12-07_10-00-09.000000"
    (newest / TRAINER_STATE).unlink()  # the step-6 folder never completed
    text = snapshot(checkpoints, [p.name for p in sorted(checkpoints.iterdir())[:2]])
    assert recover(checkpoints) is None  # a whole snapshot naming the newest complete folder: Ray resumes

    (checkpoints / SNAPSHOT).write_text(text[: len(text) // 2])  # torn mid-write
    logged: list[str] = []
    recovered = recover(checkpoints, log=logged.append)
    assert recovered.folder.name == "checkpoint_2026-12-07_10-00-05.000000" and recovered.step == 4
    assert "unreadable" in logged[0] and "step 4" in logged[0]
    assert not (checkpoints / SNAPSHOT).exists()
    assert (checkpoints / f"{SNAPSHOT}.broken-1").read_text() == text[: len(text) // 2]  # kept, not deleted

    # The recovered run died before its first report: no snapshot, the same folder again.
    assert recover(checkpoints, log=logged.append).step == 4
    snapshot(checkpoints, ["checkpoint_2026-12-07_10-00-00.000000", "checkpoint_gone"])
    assert "gone" in recover(checkpoints, log=logged.append).reason
    snapshot(checkpoints, ["checkpoint_2026-12-07_10-00-00.000000"])  # whole, but older than a complete one
    assert recover(checkpoints, log=logged.append).step == 4
    assert newest_complete_checkpoint(tmp_path / "empty") is None and recover(tmp_path / "empty") is None
