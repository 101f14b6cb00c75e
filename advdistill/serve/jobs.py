"""Evaluation jobs, stored in SQLite: a long evaluation runs in the background of the ingress
replica (`job_runner`), its state kept as one row per job in `serve.jobs_folder`/jobs.sqlite3, so a
client polls instead of holding a connection open, and a finished job's result outlives the replica
that computed it.

A job is `queued` → `running` (with `done`/`total` items) → `done` (with the same body
`/evaluate` returns), `failed` (with the error) or `interrupted`. The running replica rewrites its
row as chunks finish, with a heartbeat. A job whose heartbeat is older than `stale_after_s` lost its
replica (a restart, a crash): any live API replica adopts it — one only: `claim` is one conditional
UPDATE per attempt — and runs it again from its request, kept in the row until the job ends. A job
that has started `max_attempts` times (a request that kills its replica every time) or has no
request ends `interrupted`.

Why a database and not files (or the storage layer): with several API replicas, adopting a job and
"a finished state is never overwritten" are compare-and-set operations. SQLite does each as one
statement in a transaction; job files did them as read-then-rename (a heartbeat landing after
`finish` wrote "running" over a result), and an object store through pyarrow has no create-if-absent
or compare-and-swap at all (two replicas would both adopt a job). SQLite serves every API replica on
one node (WAL, a busy timeout); a `jobs_folder` URI is refused with that reason.

Every operation opens its own connection: a `jobs_folder` deleted while serving is created again at
the next operation (the jobs in it are gone; running jobs write their rows again); one replaced by a
file, or a database that cannot be opened, is `StoreUnavailable` (the API answers 503). A row that
cannot be read (not UTF-8, not a JSON object of its job) is skipped, counted in `unreadable` and
logged once: reading it is a KeyError (404), adopting skips it.
Plain Python: no Ray, no FastAPI.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from advdistill.storage import is_uri

log = logging.getLogger(__name__)

JOB_ID = re.compile(r"^[0-9a-f]{32}$")
STALE_HEARTBEATS = 6  # a job is stale after this many heartbeat periods without a write
ACTIVE = ("queued", "running")
FINISHED = ("done", "failed", "interrupted")
DATABASE = "jobs.sqlite3"
BUSY_TIMEOUT_S = 30.0  # a writer waits this long for another replica's transaction

SCHEMA = """CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, status TEXT NOT NULL, attempts INTEGER NOT NULL, updated_at REAL NOT NULL,
    state BLOB NOT NULL, request BLOB)"""
# The columns are what queries select on; `state` is the job as the API answers it. A write never
# replaces a finished job, nor a later attempt's row with an earlier attempt's (a replica presumed
# dead that comes back).
UPSERT = """INSERT INTO jobs (id, status, attempts, updated_at, state, request) VALUES (?, ?, ?, ?, ?, ?)
    ON CONFLICT(id) DO UPDATE SET status = excluded.status, attempts = excluded.attempts,
        updated_at = excluded.updated_at, state = excluded.state,
        request = CASE WHEN excluded.status IN ('done', 'failed', 'interrupted') THEN NULL
                       ELSE coalesce(excluded.request, jobs.request) END
    WHERE jobs.status NOT IN ('done', 'failed', 'interrupted') AND jobs.attempts <= excluded.attempts"""


class StoreUnavailable(RuntimeError):
    """The job database cannot be opened or written (its folder replaced by a file, a broken disk)."""


def new_job_id() -> str:
    return uuid.uuid4().hex


class JobStore:
    """The jobs of one folder's database; `heartbeat_s` and `max_attempts` are
    `serve.job_heartbeat_s` and `serve.job_attempts`."""

    def __init__(self, folder: str | Path, heartbeat_s: float, max_attempts: int):
        if is_uri(folder):
            raise ValueError(f"serve.jobs_folder {folder!r} is a URI: evaluation jobs are kept in SQLite, which "
                             "needs a local folder on the node of the API replicas (an object store cannot claim "
                             "a job for one replica only); give a local path")
        self.folder = Path(folder)
        self.database = self.folder / DATABASE
        self.heartbeat_s = heartbeat_s  # the running replica writes its row at least this often
        self.stale_after_s = STALE_HEARTBEATS * heartbeat_s
        self.max_attempts = max_attempts
        self.unreadable: set[str] = set()  # ids of rows that could not be read, each logged once
        self.ping()  # the folder and the table exist from the start, or this fails now

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        try:
            new = not self.database.is_file()
            if new:
                self.folder.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.database, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except (OSError, sqlite3.Error) as err:
            raise StoreUnavailable(f"the evaluation job database cannot be opened ({type(err).__name__}: {err})") from None
        try:
            db.text_factory = bytes  # rows are decoded one by one: one bad row is that row's problem
            # WAL: readers never wait for the writer; NORMAL: no fsync per heartbeat (a crash of the
            # machine may lose the last writes, never the database).
            db.execute("PRAGMA synchronous=NORMAL")
            if new:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute(SCHEMA)
            yield db
        except sqlite3.Error as err:
            raise StoreUnavailable(f"the evaluation job database failed ({type(err).__name__}: {err})") from None
        finally:
            db.close()

    def ping(self) -> None:
        """Opens the database (creating the folder and table again if they were deleted);
        StoreUnavailable if it cannot."""
        with self._db():
            pass

    def _upsert(self, job: dict[str, Any], request: dict[str, Any] | None = None) -> bool:
        if not JOB_ID.match(str(job.get("id", ""))):
            raise KeyError(job.get("id"))
        job = {**job, "updated_at": time.time()}
        if job["status"] in FINISHED:
            request = None  # a finished job is never started again
        with self._db() as db:
            written = db.execute(UPSERT, (job["id"], job["status"], job.get("attempts", 1), job["updated_at"],
                                          json.dumps(job), None if request is None else json.dumps(request)))
            return written.rowcount == 1

    def create(self, job: dict[str, Any], request: dict[str, Any]) -> None:
        """A new job and the request that starts it again if its replica stops."""
        self._upsert(job, request)

    def write(self, job: dict[str, Any]) -> bool:
        """The job's state now; False (nothing written) once the job has finished, or when a later
        attempt owns it."""
        return self._upsert(job)

    def finish(self, job: dict[str, Any]) -> bool:
        """The job's last state; its request is dropped. False if it had finished already."""
        return self._upsert(job)

    def load_request(self, job_id: str) -> dict[str, Any] | None:
        with self._db() as db:
            row = db.execute("SELECT request FROM jobs WHERE id = ?", (job_id,)).fetchone()
        try:
            return json.loads(row[0].decode()) if row and row[0] is not None else None
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None

    def claim(self, job_id: str, attempt: int, now: float | None = None) -> bool:
        """True for exactly one caller per (job, attempt), across replicas and processes: the job is
        still unfinished, at attempt `attempt - 1`, and silent for `stale_after_s`."""
        now = time.time() if now is None else now
        with self._db() as db:
            claimed = db.execute("UPDATE jobs SET attempts = ?, status = 'queued', updated_at = ? WHERE id = ? AND "
                                 "attempts = ? AND status IN ('queued', 'running') AND updated_at < ?",
                                 (attempt, now, job_id, attempt - 1, now - self.stale_after_s))
            return claimed.rowcount == 1

    def _parse(self, row: tuple) -> dict[str, Any] | None:
        """The job of a (id, status, attempts, updated_at, state) row; None (logged once) if unreadable."""
        job_id = row[0].decode(errors="replace") if isinstance(row[0], bytes) else str(row[0])
        try:
            job = json.loads(row[4].decode() if isinstance(row[4], bytes) else row[4])
            if not isinstance(job, dict) or job.get("id") != job_id:
                raise ValueError("not a JSON object of this job")
            return {**job, "status": row[1].decode(), "attempts": row[2], "updated_at": row[3]}
        except (UnicodeDecodeError, ValueError, TypeError, AttributeError) as err:
            if job_id not in self.unreadable:
                self.unreadable.add(job_id)
                log.warning("evaluation job %s: its row cannot be read (%s: %s); skipped (%d unreadable)",
                            job_id[:40], type(err).__name__, str(err)[:100], len(self.unreadable))
            return None

    def stale(self, now: float | None = None) -> list[dict[str, Any]]:
        """Unfinished jobs whose replica stopped writing: the ones a live replica should adopt."""
        now = time.time() if now is None else now
        with self._db() as db:
            rows = db.execute("SELECT id, status, attempts, updated_at, state FROM jobs WHERE status IN "
                              "('queued', 'running') AND updated_at < ? ORDER BY updated_at",
                              (now - self.stale_after_s,)).fetchall()
        return [job for job in map(self._parse, rows) if job is not None]

    def read(self, job_id: str, now: float | None = None) -> dict[str, Any]:
        """The job's state; KeyError for an unknown, malformed or unreadable id."""
        if not JOB_ID.match(job_id):
            raise KeyError(job_id)
        with self._db() as db:
            row = db.execute("SELECT id, status, attempts, updated_at, state, request IS NOT NULL FROM jobs "
                             "WHERE id = ?", (job_id,)).fetchone()
        job = None if row is None else self._parse(row)
        if job is None:
            raise KeyError(job_id)
        now = time.time() if now is None else now
        if job["status"] in ACTIVE and now - job["updated_at"] > self.stale_after_s:
            silent = now - job["updated_at"]
            if job["attempts"] < self.max_attempts and row[5]:
                job = {**job, "status": "queued", "done": 0,
                       "error": f"the replica running this job stopped (no heartbeat for {silent:.0f} s); "
                                "a live replica starts it again"}
            else:
                job = {**job, "status": "interrupted",
                       "error": f"the replica running this job stopped (no heartbeat for {silent:.0f} s) after "
                                f"{job['attempts']} attempt(s); submit it again"}
        return job


def job_state(job_id: str, model: str, total: int, status: str = "queued", done: int = 0,
              result: dict[str, Any] | None = None, error: str | None = None, created_at: float | None = None,
              attempts: int = 1) -> dict[str, Any]:
    return {"id": job_id, "model": model, "status": status, "done": done, "total": total, "result": result,
            "error": error, "created_at": created_at if created_at is not None else time.time(), "attempts": attempts}
