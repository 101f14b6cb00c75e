"""Evaluation jobs in SQLite (`serve.jobs`): state readable by any later replica; a job whose
replica stopped is adopted by exactly one live replica, and ends `interrupted` instead of running
forever when it cannot be started again; a finished job is never overwritten; an unreadable row is
skipped and counted, never a stuck adopter or a 500; a jobs folder deleted while serving is made
again, one replaced by a file is `StoreUnavailable` (503)."""

import json
import shutil
import sqlite3
import threading

import pytest

from advdistill.config import ServeConfig
from advdistill.serve.jobs import DATABASE, JobStore, StoreUnavailable, job_state, new_job_id

DEFAULTS = ServeConfig()


def store_in(folder, heartbeat_s: float = DEFAULTS.job_heartbeat_s) -> JobStore:
    """A store with the config's job settings (as an API replica makes one)."""
    return JobStore(folder, heartbeat_s=heartbeat_s, max_attempts=DEFAULTS.job_attempts)


def test_state_round_trips_and_unknown_or_malformed_ids_are_key_errors(tmp_path):
    store = store_in(tmp_path / "jobs")
    job = job_state(new_job_id(), "tiny-student", total=3)
    store.create(job, {"model": "tiny-student"})
    assert {k: v for k, v in store.read(job["id"]).items() if k != "updated_at"} == job
    store.write({**job, "status": "done", "done": 3, "result": {"metrics": {"accuracy": 1.0}}})
    assert store_in(tmp_path / "jobs").read(job["id"])["result"] == {"metrics": {"accuracy": 1.0}}  # a new replica
    assert store.load_request(job["id"]) is None  # finished: its request is dropped
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
    store.create(job, {"model": "m", "items": []})
    late = store.read(job["id"], now=written + stale + 1)
    assert late["status"] == "queued" and late["done"] == 0 and "starts it again" in late["error"]
    store.write({**job, "attempts": 2})  # started as often as allowed
    written = store.read(job["id"])["updated_at"]
    assert store.read(job["id"], now=written + stale + 1)["status"] == "interrupted"
    store.write({**job, "attempts": 2, "status": "done", "done": 10})
    assert store.read(job["id"], now=written + 10 * stale)["status"] == "done"  # finished jobs never go stale


def test_stale_lists_only_unfinished_jobs_past_their_heartbeat(tmp_path):
    store = store_in(tmp_path, heartbeat_s=1.0)
    running, done = (job_state(new_job_id(), "m", total=3, status=s) for s in ("running", "done"))
    for job in (running, done):
        store.create(job, {"model": "m"})
    now = store.read(running["id"])["updated_at"]
    assert store.stale(now=now + 1) == []
    assert [j["id"] for j in store.stale(now=now + store.stale_after_s + 1)] == [running["id"]]
    assert store.load_request(running["id"]) == {"model": "m"} and store.load_request(done["id"]) is None


def test_one_claim_per_attempt_across_stores(tmp_path):
    first, second = store_in(tmp_path), store_in(tmp_path)  # two replicas on one database
    job = job_state(new_job_id(), "m", total=1, status="running")
    first.create(job, {"model": "m"})
    later = first.read(job["id"])["updated_at"] + first.stale_after_s + 1
    assert first.claim(job["id"], 2, now=later - 2) is False  # not silent long enough yet
    assert first.claim(job["id"], 2, now=later) is True
    assert second.claim(job["id"], 2, now=later) is False and first.claim(job["id"], 2, now=later) is False
    assert second.claim(job["id"], 3, now=later + first.stale_after_s + 1) is True
    # the replica of attempt 2, presumed dead, comes back: it never overwrites attempt 3's row
    assert first.write({**job, "attempts": 2, "done": 1}) is False
    first.finish({**job, "attempts": 3, "status": "done", "done": 1})
    assert first.stale(now=float("inf")) == [] and first.load_request(job["id"]) is None


def test_a_finished_job_is_never_overwritten_and_concurrent_writes_all_land(tmp_path):
    """2,000 writes from 10 threads on one job (the heartbeat, progress and finish of replicas
    racing) never fail, and a heartbeat after `finish` never turns the result back to running."""
    store = store_in(tmp_path)
    job = job_state(new_job_id(), "m", total=500, status="running")
    store.create(job, {"model": "m"})
    errors, finished = [], threading.Event()

    def writer(k):
        try:
            for i in range(200):
                if k == 0 and i == 100:
                    assert store.finish({**job, "status": "done", "done": 500, "result": {"n": 500}})
                    finished.set()
                store.write({**job, "done": i})
        except Exception as err:  # noqa: BLE001 - collected: the test fails naming it
            errors.append(repr(err))

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and finished.is_set()
    final = store.read(job["id"])
    assert final["status"] == "done" and final["result"] == {"n": 500} and final["done"] == 500
    assert store.write({**job, "status": "running"}) is False


@pytest.mark.parametrize("state", [b"\xff\xfe not utf-8", b"[]", b"null", b'{"model": "m"}', b"{broken"],
                         ids=["not UTF-8", "a list", "null", "no id", "not JSON"])
def test_an_unreadable_row_is_skipped_counted_and_a_404(tmp_path, state, caplog):
    store = store_in(tmp_path, heartbeat_s=1.0)
    good = job_state(new_job_id(), "m", total=1, status="running")
    store.create(good, {"model": "m"})
    bad_id = new_job_id()
    with sqlite3.connect(tmp_path / DATABASE) as db:
        db.execute("INSERT INTO jobs VALUES (?, 'running', 1, 0, ?, ?)", (bad_id, state, b'{"model": "m"}'))
    later = store.read(good["id"])["updated_at"] + store.stale_after_s + 1
    for _ in range(3):  # every heartbeat: the good job is adoptable, the bad one skipped
        assert [j["id"] for j in store.stale(now=later)] == [good["id"]]
    with pytest.raises(KeyError):
        store.read(bad_id)
    assert store.unreadable == {bad_id}
    assert sum("cannot be read" in r.message for r in caplog.records) == 1  # logged once


def test_a_deleted_jobs_folder_is_made_again_and_one_replaced_by_a_file_is_unavailable(tmp_path):
    folder = tmp_path / "jobs"
    store = store_in(folder)
    job = job_state(new_job_id(), "m", total=1, status="running")
    store.create(job, {"model": "m"})
    shutil.rmtree(folder)
    assert store.write({**job, "done": 1}) is True  # the folder and database again; the running job's row too
    assert store.read(job["id"])["done"] == 1
    shutil.rmtree(folder)
    folder.write_text("not a folder")
    for call in (store.ping, lambda: store.read(job["id"]), lambda: store.write(job)):
        with pytest.raises(StoreUnavailable, match="cannot be opened"):
            call()


def test_a_uri_jobs_folder_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="SQLite.*local"):
        store_in("s3://bucket/evaluations")
    assert json.dumps(DEFAULTS.jobs_folder) == '"runs/evaluations"'
