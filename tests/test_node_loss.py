"""A worker node lost mid-curation and another mid-training (issue 14, item 3): the job finishes
with nothing lost.

A head and two worker nodes, each its own `ray start` — worker A declares `inference` (the teacher
actors and evaluations must run there), worker B declares `train` (the Ray Train workers) — and
`distill.py` submitted as a job. Once curation has written part of its shards, every process of
node A is killed (raylet, object store, workers: what a preempted VM loses) and a new node with the
same resource joins; once training has written a checkpoint, the same happens to node B. Ray
restarts the generation actor on the new node and retries the lost tasks (the actors'
`max_restarts`/`max_task_retries`), and Ray Train restarts the worker group from the latest
checkpoint (`train.max_failures`). Checked: the job succeeds; every prompt id is written exactly
once; training resumed from a checkpoint rather than from step 0, and its export and the
evaluations are complete.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import free_port
from ray_nodes import agent_ports, freeze_nodes, new_temp_dir, start_node, stop_nodes
from test_multinode import ENV, submit_distill

from advdistill.train.loop import HF_EXPORT, TRAINER_STATE

pytestmark = pytest.mark.slow

PROMPTS = 48
OVERRIDES = [
    f"curate.dataset.limit={PROMPTS}", "curate.engine.batch_size=4", "curate.engine.concurrent_batches=1",
    # 4 epochs of ~23 steps, a checkpoint every 3: node B is frozen at the first checkpoint seen
    "train.epochs=4", "train.groups_per_step=2", "train.checkpoint_every=3", "train.val_every=1000",
    "train.max_failures=2", "eval.test.limit=6", "eval.ood=[]", "sft_baseline=false",
    "curate.resources.custom_resources={inference: 1}", "eval.resources.custom_resources={inference: 1}",
    "train.resources.custom_resources={train: 1}", "train.num_workers=1", "train.resources.cpus_per_worker=1",
]


def shard_ids(folder: Path) -> list[str]:
    return [i for kind in ("groups", "dropped") for f in sorted((folder / kind).glob("*.parquet"))
            for i in pq.read_table(f, columns=["id"]).column("id").to_pylist()]


def wait_for(condition, what: str, client, job: str, timeout: float) -> None:
    from ray.job_submission import JobStatus

    started = time.time()
    while time.time() - started < timeout:
        if condition():
            return
        if client.get_job_status(job) in (JobStatus.FAILED, JobStatus.STOPPED, JobStatus.SUCCEEDED):
            break
        time.sleep(0.3)
    raise AssertionError(f"never saw {what} (job {client.get_job_status(job)}):\n{client.get_job_logs(job)[-5000:]}")


def newest_checkpoint_step(checkpoints: Path) -> int:
    """The step of the newest checkpoint whose trainer state is already written (0 if none)."""
    steps = [0]
    for folder in checkpoints.glob("checkpoint_*"):
        try:
            steps.append(json.loads((folder / TRAINER_STATE).read_text())["global_step"])
        except (OSError, ValueError, KeyError):  # still being persisted
            continue
    return max(steps)


def worker_node(port: int, resources: str, env: dict) -> str:
    temp_dir = new_temp_dir()
    start_node([f"--address=127.0.0.1:{port}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
                f"--resources={resources}", *agent_ports()], temp_dir, env)
    return temp_dir


@pytest.fixture(scope="module")
def survived(tmp_path_factory):
    from ray.job_submission import JobStatus, JobSubmissionClient

    env = dict(os.environ, **ENV)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.pop("RAY_ADDRESS", None)
    port, dashboard, client_port = free_port(), free_port(), free_port()
    head = new_temp_dir()
    nodes: list[str] = []
    output = tmp_path_factory.mktemp("lost") / "run"
    events: dict[str, float] = {}
    job = client = None
    try:
        start_node(["--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
                    "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
                    f"--ray-client-server-port={client_port}", *agent_ports()], head, env)
        nodes += [worker_node(port, '{"inference": 1}', env), worker_node(port, '{"train": 2}', env)]
        client = JobSubmissionClient(f"http://127.0.0.1:{dashboard}")
        entrypoint = " ".join([sys.executable, "ray_jobs/distill.py", "--output", str(output),
                               *(f"--set '{o}'" for o in OVERRIDES)])
        job = submit_distill(client, entrypoint)
        started = time.time()

        def curation_half_done():
            summary = output / "curate" / "summary.json"
            return not summary.is_file() and len(shard_ids(output / "curate")) >= 8

        wait_for(curation_half_done, "curation part-way", client, job, 300)
        events["ids_before_curation_kill"] = len(shard_ids(output / "curate"))
        stop_nodes(nodes[0])  # node A, with the teacher's actor, gone mid-curation
        nodes[0] = worker_node(port, '{"inference": 1}', env)
        events["curation_node_lost_s"] = time.time() - started

        checkpoints = output / "train-advdistill" / "checkpoints"

        def checkpoint_registered():
            # A checkpoint Ray Train's controller has registered (its snapshot names it), not only a
            # folder a worker has written: a worker frozen between its upload and the controller's
            # next poll restarts from step 0, rightly, since no checkpoint was reported.
            try:
                snapshot = json.loads((checkpoints / "checkpoint_manager_snapshot.json").read_text())
            except (OSError, ValueError):  # not written yet, or caught mid-write (Ray writes it in place)
                return False
            latest = snapshot.get("latest_checkpoint_result") or {}
            return bool(latest.get("checkpoint_dir_name")) and not (output / "train-advdistill" / "result.json").is_file()

        wait_for(checkpoint_registered, "a registered training checkpoint", client, job, 400)
        # Frozen at once (SIGSTOP), so training cannot run on to its end while the node's
        # processes are listed and killed: the kill must land mid-training on any machine.
        freeze_nodes(nodes[1])
        events["checkpoint_step_at_kill"] = newest_checkpoint_step(checkpoints)
        events["final_export_before_kill"] = any((c / HF_EXPORT).exists() for c in checkpoints.glob("checkpoint_*"))
        stop_nodes(nodes[1])  # node B, with the Train worker, gone mid-training
        nodes[1] = worker_node(port, '{"train": 2}', env)
        events["training_node_lost_s"] = time.time() - started

        wait_for(lambda: client.get_job_status(job) == JobStatus.SUCCEEDED, "the job succeed", client, job, 600)
        print(f"node-loss run done after {time.time() - started:.0f} s: {events}")
        return output, events, client.get_job_logs(job)
    finally:
        if job is not None:
            try:
                client.stop_job(job)
            except Exception:  # noqa: BLE001 - the cluster is torn down next anyway
                pass
        for temp_dir in reversed(nodes):
            stop_nodes(temp_dir)
        stop_nodes(head)


def test_every_prompt_is_curated_exactly_once_after_losing_the_teacher_node(survived):
    output, events, _ = survived
    assert 8 <= events["ids_before_curation_kill"] < PROMPTS  # the kill really was mid-curation
    ids = shard_ids(output / "curate")
    assert len(ids) == PROMPTS and not [i for i, n in Counter(ids).items() if n > 1]
    summary = json.loads((output / "curate" / "summary.json").read_text())
    assert summary["prompts_read"] == summary["prompts_written"] == PROMPTS


def test_training_resumes_from_its_checkpoint_after_losing_the_train_node(survived):
    output, events, _ = survived
    train = output / "train-advdistill"
    result = json.loads((train / "result.json").read_text())
    summary = json.loads((output / "curate" / "summary.json").read_text())
    assert result["train_groups"] + result["val_groups"] == summary["kept"] > 0
    steps = [json.loads(line)["step"] for line in (train / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert steps == list(range(1, len(steps) + 1)) and steps[-1] == result["step"]  # every step once
    rows = [json.loads(line) for line in (train / "metrics.jsonl").read_text().splitlines() if line.strip()]
    starts = sorted({row["resumed_from"] for row in rows})
    # The kill landed before the last step: no checkpoint held the final export yet.
    assert not events["final_export_before_kill"] and events["checkpoint_step_at_kill"] < result["step"], events
    # one fresh start, then a restart from a checkpoint step (never from step 0 again)
    assert starts[0] == 0 and len(starts) >= 2 and starts[-1] >= 3, starts
    assert (train / "final" / "model.safetensors").is_file()
    metrics = json.loads((output / "eval" / "advdistill-synthetic-test" / "metrics.json").read_text())
    assert metrics["n"] == 6
