"""Evaluation job files: a long evaluation runs in the background of the ingress replica
(`job_runner`), its state kept as one JSON file per job in `serve.jobs_folder`, so a client polls
instead of holding a connection open, and a finished job's result outlives the replica that
computed it.

A job is `queued` → `running` (with `done`/`total` items) → `done` (with the same body
`/evaluate` returns) or `failed` (with the error). The running replica rewrites the file as
chunks finish, atomically (write a temporary file, then rename), with a heartbeat. A job whose
heartbeat is older than `stale_after_s` lost its replica (a restart, a crash): any live API
replica adopts it — one only, by an exclusive claim file per attempt — and runs it again from its
request, kept beside it in `ID.request.json`. A job that has started `max_attempts` times (a
request that kills its replica every time) or has no request file ends `interrupted`.
Plain Python: no Ray, no FastAPI.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any

JOB_ID = re.compile(r"^[0-9a-f]{32}$")
STALE_HEARTBEATS = 6  # a job is stale after this many heartbeat periods without a write
ACTIVE = ("queued", "running")


def new_job_id() -> str:
    return uuid.uuid4().hex


class JobStore:
    """The job files of one folder; `heartbeat_s` and `max_attempts` are `serve.job_heartbeat_s`
    and `serve.job_attempts`."""

    def __init__(self, folder: str | Path, heartbeat_s: float, max_attempts: int):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.heartbeat_s = heartbeat_s  # the running replica writes the file at least this often
        self.stale_after_s = STALE_HEARTBEATS * heartbeat_s
        self.max_attempts = max_attempts

    def path(self, job_id: str) -> Path:
        if not JOB_ID.match(job_id):
            raise KeyError(job_id)
        return self.folder / f"{job_id}.json"

    def request_path(self, job_id: str) -> Path:
        return self.path(job_id).with_suffix(".request.json")

    def save_request(self, job_id: str, request: dict[str, Any]) -> None:
        """The job's request, written once (a state file rewritten every second stays small); it
        exists while the job is unfinished, so `stale` reads only unfinished jobs' files."""
        write_atomic(self.request_path(job_id), request)

    def load_request(self, job_id: str) -> dict[str, Any] | None:
        try:
            return json.loads(self.request_path(job_id).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def claim(self, job_id: str, attempt: int) -> bool:
        """True for exactly one caller per (job, attempt), across replicas and processes."""
        try:
            os.close(os.open(self.folder / f"{job_id}.attempt-{attempt}.claim", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
        return True

    def stale(self, now: float | None = None) -> list[dict[str, Any]]:
        """Unfinished jobs whose replica stopped writing: the ones a live replica should adopt."""
        now = time.time() if now is None else now
        found = []
        for request in sorted(self.folder.glob("*.request.json")):  # unfinished jobs only
            try:
                job = json.loads(self.path(request.name.removesuffix(".request.json")).read_text())
            except (KeyError, OSError, json.JSONDecodeError):
                continue
            if job.get("status") in ACTIVE and now - job.get("updated_at", 0) > self.stale_after_s:
                found.append(job)
        return found

    def write(self, job: dict[str, Any]) -> None:
        write_atomic(self.path(job["id"]), {**job, "updated_at": time.time()})

    def finish(self, job: dict[str, Any]) -> None:
        """Write a job's last state; its request and claims are no longer needed."""
        self.write(job)
        self.request_path(job["id"]).unlink(missing_ok=True)
        for claim in self.folder.glob(f"{job['id']}.attempt-*.claim"):
            claim.unlink(missing_ok=True)

    def read(self, job_id: str, now: float | None = None) -> dict[str, Any]:
        """The job's state; KeyError for an unknown (or malformed) id."""
        try:
            job = json.loads(self.path(job_id).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            raise KeyError(job_id) from None
        now = time.time() if now is None else now
        if job["status"] in ACTIVE and now - job.get("updated_at", 0) > self.stale_after_s:
            silent = now - job["updated_at"]
            if job.get("attempts", 1) < self.max_attempts and self.request_path(job_id).exists():
                job = {**job, "status": "queued", "done": 0,
                       "error": f"the replica running this job stopped (no heartbeat for {silent:.0f} s); "
                                "a live replica starts it again"}
            else:
                job = {**job, "status": "interrupted",
                       "error": f"the replica running this job stopped (no heartbeat for {silent:.0f} s) after "
                                f"{job.get('attempts', 1)} attempt(s); submit it again"}
        return job


def write_atomic(target: Path, data: Any) -> None:
    partial = target.with_suffix(f".{os.getpid()}.tmp")
    partial.write_text(json.dumps(data))
    os.replace(partial, target)  # readers see the old state or the new one, never half a file


def job_state(job_id: str, model: str, total: int, status: str = "queued", done: int = 0,
              result: dict[str, Any] | None = None, error: str | None = None, created_at: float | None = None,
              attempts: int = 1) -> dict[str, Any]:
    return {"id": job_id, "model": model, "status": status, "done": done, "total": total, "result": result,
            "error": error, "created_at": created_at if created_at is not None else time.time(), "attempts": attempts}
