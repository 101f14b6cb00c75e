"""Evaluation job files (`serve.jobs`): atomic state, readable by any later replica; a job whose
replica stopped is adopted by exactly one live replica, and ends `interrupted` instead of running
forever when it cannot be started again."""

import pytest

from advdistill.config import ServeConfig
from advdistill.serve.jobs import JobStore, job_state, new_job_id

DEFAULTS = ServeConfig()


def store_in(folder, heartbeat_s: float = DEFAULTS.job_heartbeat_s) -> JobStore:
    """A store with the config's job settings (as an API replica makes one)."""
    return JobStore(folder, heartbeat_s=heartbeat_s, max_attempts=DEFAULTS.job_attempts)


def test_state_round_trips_and_unknown_or_malformed_ids_are_key_errors(tmp_path):
    store = store_in(tmp_path / "jobs")
    job = job_state(new_job_id(), "tiny-student", total=3)
    store.write(job)
    assert {k: v for k, v in store.read(job["id"]).items() if k != "updated_at"} == job
    store.write({**job, "status": "done", "done": 3, "result": {"metrics": {"accuracy": 1.0}}})
    assert store_in(tmp_path / "jobs").read(job["id"])["result"] == {"metrics": {"accuracy": 1.0}}  # a new replica
    assert list((tmp_path / "jobs").iterdir()) == [tmp_path / "jobs" / f"{job['id']}.json"]  # no temporary left
    for bad in ("0" * 32, "../../etc/passwd", "A" * 32, ""):
        with pytest.raises(KeyError):
            store.read(bad)


def test_a_job_without_heartbeat_reads_as_queued_again_until_it_cannot_be_restarted(tmp_path):
    store = JobStore(tmp_path, heartbeat_s=10.0, max_attempts=2)
    stale = store.stale_after_s
    assert stale == 60.0
    job = job_state(new_job_id(), "m", total=10, status="running", done=4)
    store.write(job)
    written = store.read(job["id"])["updated_at"]
    assert store.read(job["id"], now=written + stale - 1)["status"] == "running"
    late = store.read(job["id"], now=written + stale + 1)  # no request saved: nothing to start again
    assert late["status"] == "interrupted" and "submit it again" in late["error"] and late["done"] == 4
    store.save_request(job["id"], {"model": "m", "items": []})
    late = store.read(job["id"], now=written + stale + 1)
    assert late["status"] == "queued" and late["done"] == 0 and "starts it again" in late["error"]
    store.write({**job, "attempts": 2})  # started as often as allowed
    written = store.read(job["id"])["updated_at"]
    assert store.read(job["id"], now=written + stale + 1)["status"] == "interrupted"
    store.write({**job, "status": "done", "done": 10})
    assert store.read(job["id"], now=written + 10 * stale)["status"] == "done"  # finished jobs never go stale


def test_stale_lists_only_unfinished_jobs_past_their_heartbeat(tmp_path):
    store = store_in(tmp_path, heartbeat_s=1.0)
    running, done = (job_state(new_job_id(), "m", total=3, status=s) for s in ("running", "done"))
    for job in (running, done):
        store.write(job)
    store.save_request(running["id"], {"model": "m"})
    (tmp_path / "junk.json").write_text("{")
    now = store.read(running["id"])["updated_at"]
    assert store.stale(now=now + 1) == []
    assert [j["id"] for j in store.stale(now=now + store.stale_after_s + 1)] == [running["id"]]
    assert store.load_request(running["id"]) == {"model": "m"} and store.load_request(done["id"]) is None


def test_one_claim_per_attempt_across_stores(tmp_path):
    first, second = store_in(tmp_path), store_in(tmp_path)  # two replicas on one shared folder
    job_id = new_job_id()
    assert first.claim(job_id, 2) is True
    assert second.claim(job_id, 2) is False and first.claim(job_id, 2) is False
    assert second.claim(job_id, 3) is True
    first.save_request(job_id, {"model": "m"})
    first.finish(job_state(job_id, "m", total=1, status="done", done=1))
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{job_id}.json"]  # request and claims gone
    assert first.stale(now=float("inf")) == []
