"""Evaluation jobs: a long evaluation runs in the background of the ingress replica, its state
kept as one JSON file per job in `serve.jobs_folder`, so a client polls instead of holding a
connection open, and a finished job's result outlives the replica that computed it.

A job is `queued` → `running` (with `done`/`total` items) → `done` (with the same body
`/evaluate` returns) or `failed` (with the error). The running replica rewrites the file as
chunks finish, atomically (write a temporary file, then rename), with a heartbeat: a job whose
file says `running` but whose heartbeat is older than `STALE_AFTER_S` lost its replica (a
restart, a crash) and reads as `interrupted` — resubmit it. Plain Python: no Ray, no FastAPI.
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
STALE_AFTER_S = 60.0  # a running job's file is rewritten at least every HEARTBEAT_S
HEARTBEAT_S = 10.0
ACTIVE = ("queued", "running")


def new_job_id() -> str:
    return uuid.uuid4().hex


class JobStore:
    """The job files of one folder."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, job_id: str) -> Path:
        if not JOB_ID.match(job_id):
            raise KeyError(job_id)
        return self.folder / f"{job_id}.json"

    def write(self, job: dict[str, Any]) -> None:
        job = {**job, "updated_at": time.time()}
        target = self.path(job["id"])
        partial = target.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(json.dumps(job))
        os.replace(partial, target)  # readers see the old state or the new one, never half a file

    def read(self, job_id: str, now: float | None = None) -> dict[str, Any]:
        """The job's state; KeyError for an unknown (or malformed) id."""
        try:
            job = json.loads(self.path(job_id).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            raise KeyError(job_id) from None
        now = time.time() if now is None else now
        if job["status"] in ACTIVE and now - job.get("updated_at", 0) > STALE_AFTER_S:
            job = {**job, "status": "interrupted",
                   "error": f"the replica running this job stopped (no heartbeat for {now - job['updated_at']:.0f} s); "
                            "submit it again"}
        return job


def job_state(job_id: str, model: str, total: int, status: str = "queued", done: int = 0,
              result: dict[str, Any] | None = None, error: str | None = None, created_at: float | None = None
              ) -> dict[str, Any]:
    return {"id": job_id, "model": model, "status": status, "done": done, "total": total, "result": result,
            "error": error, "created_at": created_at if created_at is not None else time.time()}
