"""Evaluation job files (`serve.jobs`): atomic state, readable by any later replica, and a job
whose replica stopped reads as interrupted instead of running forever."""

import pytest

from advdistill.serve.jobs import STALE_AFTER_S, JobStore, job_state, new_job_id


def test_state_round_trips_and_unknown_or_malformed_ids_are_key_errors(tmp_path):
    store = JobStore(tmp_path / "jobs")
    job = job_state(new_job_id(), "tiny-student", total=3)
    store.write(job)
    assert {k: v for k, v in store.read(job["id"]).items() if k != "updated_at"} == job
    store.write({**job, "status": "done", "done": 3, "result": {"metrics": {"accuracy": 1.0}}})
    assert JobStore(tmp_path / "jobs").read(job["id"])["result"] == {"metrics": {"accuracy": 1.0}}  # a new replica
    assert list((tmp_path / "jobs").iterdir()) == [tmp_path / "jobs" / f"{job['id']}.json"]  # no temporary left
    for bad in ("0" * 32, "../../etc/passwd", "A" * 32, ""):
        with pytest.raises(KeyError):
            store.read(bad)


def test_a_running_job_without_heartbeat_reads_as_interrupted(tmp_path):
    store = JobStore(tmp_path)
    job = job_state(new_job_id(), "m", total=10, status="running", done=4)
    store.write(job)
    written = store.read(job["id"])["updated_at"]
    assert store.read(job["id"], now=written + STALE_AFTER_S - 1)["status"] == "running"
    late = store.read(job["id"], now=written + STALE_AFTER_S + 1)
    assert late["status"] == "interrupted" and "submit it again" in late["error"] and late["done"] == 4
    store.write({**job, "status": "done", "done": 10})
    assert store.read(job["id"], now=written + 10 * STALE_AFTER_S)["status"] == "done"  # finished jobs never go stale
