"""Tracking backends (`tracking.backend`, issue 31.3): W&B in offline mode writes its runs as
files, read back here from W&B's own transaction log; `none` and the old `enabled: false` track
nothing. MLflow's record of a whole run is checked in test_distill_e2e.py."""

import json
from pathlib import Path

import pytest

from advdistill.config import load_config
from advdistill.run.tracking import NoTracking, StepLogger, open_tracking

REPO = Path(__file__).resolve().parents[1]


def wandb_records(path: Path) -> list:
    """The records of a `.wandb` file: W&B's header, then a LevelDB-format log (32 KiB blocks; each
    chunk: CRC32C, 2-byte length, type FULL/FIRST/MIDDLE/LAST) of `Record` protobufs."""
    from wandb.proto.wandb_internal_pb2 import Record

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    records, pending, pos = [], b"", 7
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block  # a block's tail too short for a header is padding
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:
            break
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def offline_runs(folder: Path) -> dict[str, list]:
    """{run id: its records, every offline folder of that id together}."""
    runs: dict[str, list] = {}
    for path in sorted(folder.glob("wandb/offline-run-*/run-*.wandb")):
        runs.setdefault(path.stem.removeprefix("run-"), []).extend(wandb_records(path))
    return runs


def of_kind(records: list, kind: str) -> list:
    return [getattr(r, kind) for r in records if r.WhichOneof("record_type") == kind]


def values(items) -> dict:
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}


@pytest.fixture
def wandb_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    import wandb

    yield
    wandb.teardown()  # stops W&B's service process


def test_wandb_offline_writes_the_config_each_step_and_each_stage(tmp_path, wandb_offline):
    import wandb

    cfg = load_config(REPO / "configs" / "tiny.yaml", ["tracking.backend=wandb", "tracking.experiment=tests"])
    root, state = tmp_path / "run", {}
    root.mkdir()
    tracker = open_tracking(cfg, root, state)
    assert tracker.name == "W&B" and state["backend"] == "wandb"
    tracker.log_config(cfg.model_dump(mode="json"))
    # What rank 0 of a training does, from the arguments the driver hands the Train workers.
    args = tracker.step_logger_args("train-advdistill")
    json.dumps(args)  # they travel in train_loop_config
    steps = StepLogger(**args)
    for step, loss in ((1, 2.0), (2, 1.5)):
        steps.log({"step": step, "loss": loss, "lr": 1e-3}, step=step)
    steps.run.finish()
    (root / "result.json").write_text('{"loss": 1.5}')
    tracker.end_stage("train-advdistill", metrics={"final/loss": 1.5}, params={"final_checkpoint": "final"},
                      artifacts=[root / "result.json"])
    tracker.finish()
    # A rerun logs into the same runs.
    again = open_tracking(cfg, root, state)
    assert again.run_id == tracker.run_id and again.stage_run("train-advdistill") == args["run_id"]
    again.finish()
    wandb.teardown()  # W&B's service has written everything when it stops

    runs = offline_runs(root)
    parent, stage = runs[state["run_id"]], runs[state["stages"]["train-advdistill"]]
    run = of_kind(parent, "run")[0]
    assert (run.run_group, run.job_type, run.project) == ("tiny:run", "run", "tests")
    config = {k: v for c in of_kind(parent, "config") for k, v in values(c.update).items()}
    assert config["train.lr"] == 3e-4 and config["teacher"] == "models/tiny-teacher"
    history = [values(h.item) for h in of_kind(stage, "history")]
    assert [(h["_step"], h["loss"]) for h in history] == [(1, 2.0), (2, 1.5)]
    summary = {k: v for s in of_kind(stage, "summary") for k, v in values(s.update).items()}
    assert summary["final/loss"] == 1.5
    assert {f.path for files in of_kind(stage, "files") for f in files.files} >= {"result.json"}


@pytest.mark.parametrize("overrides", [["tracking.backend=none"], ["tracking.enabled=false"]])
def test_no_backend_tracks_nothing(tmp_path, overrides):
    cfg = load_config(REPO / "configs" / "tiny.yaml", overrides)
    assert isinstance(open_tracking(cfg, tmp_path, {}), NoTracking)
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "wandb").exists()
