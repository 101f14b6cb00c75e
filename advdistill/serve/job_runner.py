"""Evaluation jobs in the background of an ingress replica (POST /evaluations): at most
`serve.max_concurrent_jobs` at once (Busy beyond), each job's state written to its file
(`serve.jobs`) as chunks finish and at least every heartbeat, and — every heartbeat — the jobs of
replicas that stopped adopted from their saved request (one replica wins each attempt's claim).
Plain asyncio: what a job runs is given as `plan` and `execute`."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable

from advdistill.serve.catalog import OffLoop
from advdistill.serve.error_handlers import failure_text
from advdistill.serve.errors import Busy, NotFound
from advdistill.serve.execution import Progress
from advdistill.serve.jobs import JobStore, job_state, new_job_id
from advdistill.serve.planning import Plan
from advdistill.serve.schemas import EvaluateRequest, EvaluateResponse, excerpt

PROGRESS_WRITE_S = 1.0  # a running job's file is rewritten at most this often on progress


class JobRunner:
    """This replica's jobs: `running` (the tasks) and `states` (their state, updated in place and
    readable before their file is first written)."""

    def __init__(self, store: JobStore, max_concurrent: int, plan: Callable[[EvaluateRequest], Awaitable[Plan]],
                 execute: Callable[[Plan, Progress], Awaitable[EvaluateResponse]], off_loop: OffLoop):
        self.store, self.max_concurrent = store, max_concurrent
        self.plan, self.execute, self.off_loop = plan, execute, off_loop
        self.running: dict[str, asyncio.Task] = {}
        self.states: dict[str, dict[str, Any]] = {}

    def active(self) -> int:
        return sum(not task.done() for task in self.running.values())

    def submit(self, body: EvaluateRequest, plan: Plan) -> dict[str, Any]:
        """Start a checked request as a job; its state at once. Synchronous: no other submission
        runs between the count of active jobs and the new job's task."""
        active = self.active()
        if active >= self.max_concurrent:
            raise Busy(f"{active} evaluation jobs are running (serve.max_concurrent_jobs); retry when one is done")
        state = job_state(new_job_id(), body.model, total=len(plan.records))
        self.states[state["id"]] = state
        request = body.model_dump(mode="json", exclude_unset=True)  # to start it again
        self.running[state["id"]] = asyncio.create_task(self._run(state, plan, request))
        return dict(state)

    async def read(self, job_id: str) -> dict[str, Any]:
        try:
            return self.states.get(job_id) or await self.off_loop(self.store.read, job_id)
        except KeyError:
            raise NotFound(f"no evaluation job {excerpt(job_id, 40)!r}") from None

    async def _run(self, state: dict[str, Any], plan: Plan, request: dict[str, Any] | None = None) -> None:
        if request is not None:
            await self.off_loop(self.store.save_request, state["id"], request)
        state["status"] = "running"
        await self.off_loop(self.store.write, dict(state))
        last_write = time.monotonic()

        async def progress(done: int) -> None:
            nonlocal last_write
            state["done"] = done
            if time.monotonic() - last_write >= PROGRESS_WRITE_S:
                last_write = time.monotonic()
                await self.off_loop(self.store.write, dict(state))

        async def heartbeat() -> None:  # long chunks: the file still says this replica is alive
            while True:
                await asyncio.sleep(self.store.heartbeat_s)
                await self.off_loop(self.store.write, dict(state))

        beating = asyncio.create_task(heartbeat())
        try:
            answer = await self.execute(plan, progress)
            state.update(status="done", done=state["total"], result=answer.model_dump(mode="json"))
        except Exception as err:  # noqa: BLE001 - a job's failure is reported in the job, never lost
            state.update(status="failed", error=failure_text(err))
        finally:
            beating.cancel()
            await self.off_loop(self.store.finish, state)
            self.running.pop(state["id"], None)
            self.states.pop(state["id"], None)  # from now on read from its file

    async def adopt_stale_jobs(self) -> None:
        """Every heartbeat, for ever: start again the jobs whose replica stopped (a restart, a
        crash, a lost node), from their saved request."""
        while True:
            await asyncio.sleep(self.store.heartbeat_s)
            try:
                for job in await self.off_loop(self.store.stale):
                    if job["id"] in self.running:
                        continue  # ours, only slow to write
                    if self.active() >= self.max_concurrent:
                        break  # at the cap: next heartbeat
                    await self._adopt(job)
            except Exception as err:  # noqa: BLE001 - the adopter must outlive any one bad job file
                print(f"evaluation jobs: adopting stale jobs failed: {type(err).__name__}: {err}", flush=True)

    async def _adopt(self, job: dict[str, Any]) -> None:
        attempt = job.get("attempts", 1) + 1
        if not await self.off_loop(self.store.claim, job["id"], attempt):
            return  # another replica took it
        request = await self.off_loop(self.store.load_request, job["id"])
        if request is None or attempt > self.store.max_attempts:
            why = "its request was not saved" if request is None else f"it started {attempt - 1} times"
            await self.off_loop(self.store.finish, {**job, "status": "interrupted",
                                                    "error": f"the replica running this job stopped and {why}; "
                                                             "submit it again"})
            return
        state = {**job, "status": "queued", "done": 0, "attempts": attempt, "error": None}
        try:  # checked again: the models, limits or data may have changed since it was submitted
            plan = await self.plan(EvaluateRequest.model_validate(request))
        except Exception as err:  # noqa: BLE001 - a job that cannot start again ends failed, never claimed and silent
            await self.off_loop(self.store.finish, {**state, "status": "failed", "error": failure_text(err)})
            return
        state["total"] = len(plan.records)
        self.states[job["id"]] = state
        self.running[job["id"]] = asyncio.create_task(self._run(state, plan))
