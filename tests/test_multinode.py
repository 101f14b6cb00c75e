"""The whole method on a real multi-node Ray cluster on this machine (issue 14, item 3): a head and
two worker nodes started with `ray start` (three raylets, three object stores), each declaring
one custom resource — `inference` (worker A), `train` (worker B), `serve` (the head) — and a run
whose stages ask for them (`curate/eval.resources.custom_resources`, `train.resources.custom_resources`,
`serve.custom_resources`), so the generation actors, the Ray Train workers and the Serve replicas must land
on three different nodes. `distill.py --serve` is submitted as a job with `--working-dir .`
(the code reaches every node through the job's runtime environment, as on a cloud cluster).

Checked: every stage's workers ran on the node that declares its resource (`run.json` node ids,
from Ray's state API, against the nodes' resources); every output is complete on the run's
folder (one folder every node sees: a local path shared by the three nodes here, an S3 URI on a
cloud cluster — the storage layer's URI side is tests/test_storage.py); the kept and dropped
ids equal a single-node curation's of the same prompts.

A worker node lost mid-curation and mid-training (the job still finishes, nothing lost) is
tests/test_node_loss.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import REPO, free_port
from ray_nodes import agent_ports, new_temp_dir, start_node, stop_nodes

pytestmark = pytest.mark.slow

PROMPTS = 16
SHORT = [
    f"curate.dataset.limit={PROMPTS}", "train.epochs=1", "train.groups_per_step=4", "train.checkpoint_every=1000",
    "train.val_every=1000", "eval.test.limit=6", "eval.ood=[]", "sft_baseline=false",
]
PLACED = ["curate.resources.custom_resources={inference: 1}", "eval.resources.custom_resources={inference: 1}",
          "train.resources.custom_resources={train: 1}", "train.num_workers=2", "train.resources.cpus_per_worker=1",
          "serve.custom_resources={serve: 1}",
          "serve.port={port}"]
STAGES = ["curate", "train-advdistill", "eval-teacher", "eval-base", "eval-advdistill"]
MODELS = ["advdistill", "base", "teacher"]
ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
       "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}


def curated_ids(folder: Path) -> dict[str, list[str]]:
    return {kind: sorted(i for f in (folder / kind).glob("*.parquet")
                         for i in pq.read_table(f, columns=["id"]).column("id").to_pylist())
            for kind in ("groups", "dropped")}


@pytest.fixture(scope="module")
def single_node_curation(tmp_path_factory):
    """The same prompts curated by `curate.py` on a one-node local Ray (its own, started and
    ended by the script)."""
    out = tmp_path_factory.mktemp("single") / "curate"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(ENV)
    cmd = [sys.executable, "ray_jobs/curate.py", "--output", str(out), "--set", f"curate.dataset.limit={PROMPTS}"]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return curated_ids(out)


def submit_distill(client, entrypoint: str) -> str:
    """Submit ENTRYPOINT with the repository as the job's working dir (the code reaches every node
    through the runtime environment; the Python env is the nodes' own)."""
    runtime_env = {"working_dir": str(REPO), "excludes": [".venv", "runs", ".git", "*.egg-info"]}
    for attempt in range(15):  # the head's job agent answers a few seconds after `ray start` returns
        try:
            return client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
        except RuntimeError as error:
            if "No available agent" not in str(error) or attempt == 14:
                raise
            time.sleep(2)
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def cluster():
    """Head (`serve`) + worker A (`inference`) + worker B (`train`), each its own `ray start`."""
    env = dict(os.environ, **ENV)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.pop("RAY_ADDRESS", None)
    port, dashboard, client = free_port(), free_port(), free_port()
    temp_dirs = [new_temp_dir() for _ in range(3)]
    try:
        start_node(["--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=3",
                    '--resources={"serve": 8}', "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                    f"--dashboard-port={dashboard}", f"--ray-client-server-port={client}", *agent_ports()],
                   temp_dirs[0], env)
        for temp_dir, resources in zip(temp_dirs[1:], ('{"inference": 1}', '{"train": 2}')):
            start_node([f"--address=127.0.0.1:{port}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
                        f"--resources={resources}", *agent_ports()], temp_dir, env)
        yield {"address": f"127.0.0.1:{port}", "dashboard": f"http://127.0.0.1:{dashboard}"}
    finally:
        for temp_dir in reversed(temp_dirs):
            stop_nodes(temp_dir)


@pytest.fixture(scope="module")
def run(single_node_curation, cluster, tmp_path_factory):
    """`distill.py --serve` submitted as a job; returns once the replicas serve (run.json says so),
    then stops the job (serving never ends by itself)."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    output = tmp_path_factory.mktemp("multi") / "run"
    serve_port = free_port()
    overrides = SHORT + [o.replace("{port}", str(serve_port)) for o in PLACED]
    entrypoint = " ".join([sys.executable, "ray_jobs/distill.py", "--output", str(output), "--serve",
                           *(f"--set '{o}'" for o in overrides)])
    client = JobSubmissionClient(cluster["dashboard"])
    job = submit_distill(client, entrypoint)
    started, manifest = time.time(), {}
    try:
        while time.time() - started < 540:
            status = client.get_job_status(job)
            if status in (JobStatus.FAILED, JobStatus.STOPPED, JobStatus.SUCCEEDED):
                break
            if (output / "run.json").is_file():
                manifest = json.loads((output / "run.json").read_text())
                if manifest.get("serve", {}).get("nodes"):
                    break
            time.sleep(2)
        logs = client.get_job_logs(job)
        assert manifest.get("serve", {}).get("nodes"), f"job {status} after {time.time() - started:.0f} s:\n{logs[-6000:]}"
        print(f"multi-node run serving after {time.time() - started:.0f} s")
        return output, manifest, logs
    finally:
        try:
            client.stop_job(job)
        except Exception:  # noqa: BLE001 - the cluster is torn down next anyway
            pass


def node_with(manifest: dict, resource: str) -> str:
    ids = [node_id for node_id, node in manifest["nodes"].items() if resource in node["resources"]]
    assert len(ids) == 1, (resource, manifest["nodes"])
    return ids[0]


def test_each_stage_ran_on_the_node_that_declares_its_resource(run):
    _, manifest, _ = run
    inference, train, serve = (node_with(manifest, r) for r in ("inference", "train", "serve"))
    assert len({inference, train, serve}) == 3 and len(manifest["nodes"]) == 3
    assert all(node["alive"] for node in manifest["nodes"].values())
    assert list(manifest["stages"]) == STAGES
    assert manifest["stages"]["curate"]["nodes"] == [inference]
    assert manifest["stages"]["train-advdistill"]["nodes"] == [train]
    for model in MODELS:
        assert manifest["stages"][f"eval-{model}"]["nodes"] == [inference], model
    assert manifest["serve"]["nodes"] == [serve]
    assert sorted(manifest["serve"]["models"]) == MODELS


def test_every_output_is_complete_on_the_shared_folder(run):
    output, manifest, logs = run
    summary = json.loads((output / "curate" / "summary.json").read_text())
    assert summary["prompts_read"] == summary["prompts_written"] == PROMPTS
    train = output / "train-advdistill"
    assert (train / "final" / "model.safetensors").is_file() and (train / "final" / "tokenizer.json").is_file()
    result = json.loads((train / "result.json").read_text())
    assert result["train_groups"] + result["val_groups"] == summary["kept"] > 0
    assert list((train / "checkpoints").iterdir())  # Ray Train wrote them from node B
    for model in MODELS:
        metrics = json.loads((output / "eval" / f"{model}-synthetic-test" / "metrics.json").read_text())
        assert metrics["n"] == 6 and (output / "eval" / f"{model}-synthetic-test" / "predictions.jsonl").is_file()
    assert (output / "report" / "report.md").is_file()
    assert "| Teacher |" in logs


def test_curated_ids_equal_a_single_node_curation(run, single_node_curation):
    output, _, _ = run
    multi = curated_ids(output / "curate")
    assert len(multi["groups"]) + len(multi["dropped"]) == PROMPTS
    assert multi == single_node_curation
