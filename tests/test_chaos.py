"""Chaos in the batch stages (issue 15): poison rows are quarantined or skipped with a reason and
counted while the rest of the run completes; errors name the file at fault; output folders are
checked before Ray starts; a driver killed with SIGKILL leaves no Ray process behind. (The
API's abuse cases are in tests/test_abuse.py.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from advdistill.config import DatasetConfig, with_overrides
from advdistill.data.loaders import load_records
from advdistill.data.synthetic import make_split
from advdistill.local_ray import CLEAN_EXIT_GRACE_S, TERM_GRACE_S

from conftest import REPO, TINY_STUDENT, TINY_TEACHER, read_jsonl
from groups_fixture import write_groups

LONG_QUESTION = "How many apples does Tom have? " * 400  # ~2,800 tokens: over any tiny context


def jsonl_bytes(lines: list[bytes | str | dict]) -> bytes:
    out = []
    for line in lines:
        if isinstance(line, dict):
            line = json.dumps(line)
        out.append(line if isinstance(line, bytes) else line.encode())
    return b"\n".join(out) + b"\n"


# ------------------------------------------------------------------ rows, not runs, fail


def test_an_undecodable_line_is_quarantined_and_the_rest_load(tmp_path):
    rows = make_split("test", 3)
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(jsonl_bytes([rows[0], b'{"question": "caf\xe9 au lait", "answer": 1}', rows[1], rows[2]]))
    result = load_records(DatasetConfig(name="synthetic", split="test", path=str(path)))
    assert [r["id"] for r in result.records] == [r["id"] for r in rows]
    assert [(q["line"], q["reason"].split(":")[0]) for q in result.quarantined] == [(2, "not UTF-8")]
    assert "caf\\xe9" in result.quarantined[0]["row"] and result.quarantined[0]["source"] == str(path)


def test_quarantine_reports_the_1_based_file_line_of_every_bad_row(tmp_path):
    """Blank, non-JSON and non-UTF-8 lines before a bad row used to shift it: file line 22 was
    reported as index 17."""
    good = make_split("test", 16)
    lines: list = []
    for i, row in enumerate(good):
        lines.append(row)
        if i in (2, 5, 8):
            lines.append("")
        if i == 4:
            lines.append("{not json")
        if i == 10:
            lines.append(b"\xff\xfe")
    lines.append({**good[0], "id": "bad-row", "question": ""})  # file line 22: a row with an empty question
    assert len(lines) == 22
    path = tmp_path / "lines.jsonl"
    path.write_bytes(jsonl_bytes(lines))
    result = load_records(DatasetConfig(name="synthetic", split="test", path=str(path)))
    assert len(result.records) == 16
    assert [(q["line"], q["reason"].split(":")[0]) for q in result.quarantined] == [
        (7, "not JSON"), (16, "not UTF-8"), (22, "missing or empty field 'question'")]
    assert all("index" not in q for q in result.quarantined)


def test_curation_quarantines_undecodable_and_over_long_rows_and_completes(ray_cluster, tiny_cfg, tmp_path):
    from advdistill.curate.stage import curate
    from advdistill.curate.store import CurateOutput

    rows = make_split("test", 6)
    path = tmp_path / "poison.jsonl"
    path.write_bytes(jsonl_bytes([rows[0], rows[1], b"\xc3\x28 not utf-8", rows[2], {**rows[3], "id": "too-long",
                                                                                      "question": LONG_QUESTION},
                                  rows[4], rows[5]]))
    cfg = with_overrides(tiny_cfg, {"curate.dataset": {"name": "synthetic", "split": "test", "path": str(path)},
                                    "curate.sampling.n": 2, "curate.sampling.max_tokens": 32, "reward.max_len": 32,
                                    "curate.engine.batch_size": 8})
    out = tmp_path / "out"
    summary = curate(cfg, out)
    assert summary["prompts_read"] == summary["prompts_written"] == 5  # the too-long prompt is quarantined, not read
    assert summary["quarantined"] == 2
    assert summary["quarantine_reasons"] == {"not UTF-8": 1, "prompt too long": 1}
    quarantine = read_jsonl(out / "quarantine.jsonl")
    assert quarantine[0]["line"] == 3
    too_long = quarantine[1]
    assert too_long["id"] == "too-long" and too_long["prompt_tokens"] > too_long["limit"] == 1024 - 32
    assert CurateOutput(out).is_complete()  # a rerun has nothing left to do


def test_a_group_whose_prompt_fills_max_seq_len_is_skipped_and_counted(tiny_cfg, tiny_tokenizer):
    from advdistill.train.collate import tokenize_group
    from advdistill.train.trainer import training_contract
    from test_training_contract import RIGHT, WRONG, group_row

    row = group_row([RIGHT, WRONG], record={"id": "long", "task": "synthetic", "question": LONG_QUESTION,
                                            "reference": "5", "choices": None})
    group = tokenize_group(row, tiny_tokenizer, tiny_cfg)
    assert group["keep"] is False and group["skipped"].startswith("prompt too long")
    assert group["prompt_ids"] == [] and group["response_ids"] == []
    contract = training_contract([{"id": "ok", "keep": True, "val": False, "truncated_responses": 0, "skipped": None},
                                  {**group, "truncated_responses": 0}], tiny_cfg)
    assert contract["train_groups"] == 1 and contract["dropped_groups"] == 0
    assert contract["skipped_groups"] == 1 and contract["skipped"][0]["id"] == "long"


def test_training_skips_an_over_long_group_and_completes(ray_cluster, tiny_cfg, tiny_tokenizer, tmp_path):
    from advdistill.curate.store import CurateOutput, write_shard
    from advdistill.schema import CuratedGroup, arrow_schema, from_arrow, to_arrow
    from advdistill.train.trainer import train

    folder = write_groups(tmp_path / "groups", tiny_tokenizer, tiny_cfg, n=6)
    rows = from_arrow(pq.read_table(next(CurateOutput(folder).groups.glob("*.parquet"))))
    long = {**rows[0], "id": "too-long", "question": LONG_QUESTION}
    write_shard(CurateOutput(folder).groups, to_arrow([long], arrow_schema(CuratedGroup)))
    cfg = with_overrides(tiny_cfg, {"train.epochs": 1, "train.max_steps": 1, "train.num_workers": 1,
                                    "train.val_fraction": 0.0, "train.groups_per_step": 2})
    result = train(cfg, folder, tmp_path / "train")
    assert result["skipped_groups"] == 1 and result["skipped"][0]["id"] == "too-long"
    assert "prompt too long" in result["skipped"][0]["reason"] and result["train_groups"] == 6
    assert json.loads((tmp_path / "train" / "result.json").read_text())["skipped_groups"] == 1
    assert (tmp_path / "train" / "final" / "config.json").is_file()


# ------------------------------------------------------------------ errors that name the file


def test_a_truncated_parquet_shard_fails_training_naming_the_file(tiny_cfg, tiny_tokenizer, tmp_path):
    from advdistill.train.trainer import BadShard, train

    folder = write_groups(tmp_path / "groups", tiny_tokenizer, tiny_cfg, n=4)
    shard = next((folder / "groups").glob("*.parquet"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(BadShard, match=shard.name):
        train(tiny_cfg, folder, tmp_path / "train")


def run_entry_point(script: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run([sys.executable, str(REPO / "ray_jobs" / script), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.mark.parametrize("script, args, needle", [
    ("curate.py", ["--output", "{file}/sub"], "output folder"),
    ("curate.py", ["--output", "/proc/advdistill-out"], "output folder"),
    ("train.py", ["--groups", "{tmp}/missing", "--output", "{tmp}/train"], "groups folder"),
    ("train.py", ["--groups", "{tmp}/groups", "--output", "{tmp}/train"], "not a readable Parquet file"),
    ("evaluate.py", ["--model", str(TINY_STUDENT), "--dataset", "synthetic", "--split", "test", "--output",
                     "{file}/eval"], "output folder"),
])
def test_entry_points_check_their_paths_before_ray_starts(tmp_path, script, args, needle):
    (tmp_path / "file").write_text("in the way")
    groups = tmp_path / "groups" / "groups"
    groups.mkdir(parents=True)
    (groups / "truncated.parquet").write_bytes(b"PAR1 cut short")
    args = [a.format(file=tmp_path / "file", tmp=tmp_path) for a in args]
    start = time.perf_counter()
    done = run_entry_point(script, *args)
    elapsed = time.perf_counter() - start
    assert done.returncode == 1, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "Started a local Ray instance" not in done.stderr + done.stdout
    assert elapsed < 20, f"{elapsed:.1f} s"


# ------------------------------------------------------------------ a killed driver's processes


def marked(run_id: str) -> list:
    from advdistill.local_ray import marked_processes

    return marked_processes(run_id)


# What each driver runs, and when it is killed: curation once its teacher actor runs; training once
# its Ray Train worker has written a checkpoint (before issue 15: 4 and 13 processes outlived them).
KILLED_DRIVERS = {
    "curate.py": (["--output", "{tmp}/out", "--limit", "64", "--set", f"teacher={TINY_TEACHER}",
                   "--set", "curate.engine.batch_size=4"],
                  "the teacher actor", lambda tmp, names: any("GenerationActor" in n for n in names)),
    # One step an epoch, a checkpoint at each epoch's end, a hundred epochs: still training when killed.
    "train.py": (["--groups", "{tmp}/groups", "--output", "{tmp}/train", "--set", f"student={TINY_STUDENT}",
                  "--set", "train.epochs=100", "--set", "train.val_fraction=0.0"],
                 "a training checkpoint", lambda tmp, names: any("RayTrainWorker" in n for n in names)
                 and any((tmp / "train" / "checkpoints").glob("checkpoint_*/trainer_state.json"))),
}
# The reaper's own bound (the driver's exit noticed, a clean exit's grace, SIGTERM's grace) and
# a margin; Ray alone took ~26 s to end its last worker here, and 4 to 13 processes never ended.
REAPED_WITHIN_S = CLEAN_EXIT_GRACE_S + TERM_GRACE_S + 8


@pytest.mark.parametrize("script", sorted(KILLED_DRIVERS))
def test_a_driver_killed_with_sigkill_leaves_no_ray_process(request, tmp_path, script):
    """A driver on its own local cluster (no RAY_ADDRESS), killed with SIGKILL once its Ray work
    runs (curation: the teacher actor; training: a Ray Train worker, past its first checkpoint):
    every process of that cluster ends, within the reaper's bound."""
    from advdistill.local_ray import RUN_MARKER, reap

    args, started, ready = KILLED_DRIVERS[script]
    if script == "train.py":
        write_groups(tmp_path / "groups", request.getfixturevalue("tiny_tokenizer"),
                     request.getfixturevalue("tiny_cfg"), n=8)
    run_id = f"test-{uuid.uuid4().hex}"
    ray_tmp = Path(f"/tmp/rk-{uuid.uuid4().hex[:6]}")  # short: Ray's socket paths have a length limit
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update({RUN_MARKER: run_id, "RAY_TMPDIR": str(ray_tmp), "RAY_AUTH_MODE": "disabled",
                "RAY_USAGE_STATS_ENABLED": "0"})
    ray_tmp.mkdir()
    driver = subprocess.Popen([sys.executable, str(REPO / "ray_jobs" / script), *[a.format(tmp=tmp_path) for a in args]],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            names = [" ".join(p.cmdline()) for p in marked(run_id) if _alive(p)]
            if ready(tmp_path, names):
                break
            assert driver.poll() is None, f"the driver ended before {started} was there"
            time.sleep(0.5)
        else:
            pytest.fail(f"{started}: never there")
        before = len(marked(run_id))
        driver.kill()
        driver.wait()
        killed = time.time()
        while time.time() < killed + REAPED_WITHIN_S and marked(run_id):
            time.sleep(0.5)
        left = [f"{p.pid} {' '.join(p.cmdline())[:80]}" for p in marked(run_id) if _alive(p)]
        assert not left, f"{len(left)} of {before} processes outlived the driver by {REAPED_WITHIN_S} s: {left}"
        print(f"{script}: {before} processes, all gone {time.time() - killed:.1f} s after the kill")
    finally:
        if driver.poll() is None:
            driver.kill()
        reap(run_id)  # whatever the outcome, nothing of this test's cluster stays
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _alive(proc) -> bool:
    try:
        return proc.is_running() and proc.status() != "zombie"
    except Exception:  # noqa: BLE001
        return False
