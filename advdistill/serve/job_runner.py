"""Evaluation jobs in the background of an ingress replica (POST /evaluations): at most
`serve.max_concurrent_jobs` at once (Busy beyond), each job's state written to its row
(`serve.jobs`) as chunks finish and at least every heartbeat, and — every heartbeat — the jobs of
replicas that stopped adopted from their saved request (one replica wins each attempt's claim).
Plain asyncio: what a job runs is given as `plan` and `execute`.

The cap holds because a slot is taken with no `await` between counting and taking it: `submit` is
synchronous, and adoption reserves its slot before it claims, loads and plans. Each job has one
writer (`JobWriter`): its progress, heartbeat and last writes go one at a time, and nothing is
written after the last (the store also never overwrites a finished job)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable

from advdistill.serve.catalog import OffLoop
from advdistill.serve.error_handlers import failure_text
from advdistill.serve.errors import Busy, NotFound, Unavailable
from advdistill.serve.execution import Progress
from advdistill.serve.jobs import JobStore, StoreUnavailable, job_state, new_job_id
from advdistill.serve.planning import Plan
from advdistill.serve.schemas import EvaluateRequest, EvaluateResponse, excerpt

log = logging.getLogger(__name__)

PROGRESS_WRITE_S = 1.0  # a running job's row is rewritten at most this often on progress


class JobWriter:
    """The one writer of one job's row in this replica: writes go one at a time, and after
    `finish` nothing more is written."""

    def __init__(self, store: JobStore, state: dict[str, Any], off_loop: OffLoop):
        self.store, self.state, self.off_loop = store, state, off_loop
        self.lock = asyncio.Lock()
        self.finished = False

    async def save(self) -> None:
        async with self.lock:
            if not self.finished:
                await self.off_loop(self.store.write, dict(self.state))

    async def finish(self) -> None:
        async with self.lock:
            if not self.finished:
                self.finished = True
                await self.off_loop(self.store.finish, dict(self.state))


class JobRunner:
    """This replica's jobs: `running` (the tasks), `states` (their state, updated in place and
    readable before their row is first written) and `reserved` (slots held by adoptions under way)."""

    def __init__(self, store: JobStore, max_concurrent: int, plan: Callable[[EvaluateRequest], Awaitable[Plan]],
                 execute: Callable[[Plan, Progress], Awaitable[EvaluateResponse]], off_loop: OffLoop):
        self.store, self.max_concurrent = store, max_concurrent
        self.plan, self.execute, self.off_loop = plan, execute, off_loop
        self.running: dict[str, asyncio.Task] = {}
        self.states: dict[str, dict[str, Any]] = {}
        self.reserved = 0

    def active(self) -> int:
        return sum(not task.done() for task in self.running.values()) + self.reserved

    def submit(self, body: EvaluateRequest, plan: Plan) -> dict[str, Any]:
        """Start a checked request as a job; its state at once. Synchronous: no other submission
        or adoption runs between the count of active jobs and the new job's task."""
        active = self.active()
        if active >= self.max_concurrent:
            raise Busy(f"{active} evaluation jobs are running (serve.max_concurrent_jobs); retry when one is done")
        state = job_state(new_job_id(), body.model, total=len(plan.records))
        self.states[state["id"]] = state
        request = body.model_dump(mode="json", exclude_unset=True)  # to start it again
        self.running[state["id"]] = asyncio.create_task(self._run(state, plan, request))
        return dict(state)

    async def check_store(self) -> None:
        """Unavailable (503) when the job database cannot be opened; a deleted jobs folder is
        created again."""
        try:
            await self.off_loop(self.store.ping)
        except StoreUnavailable as err:
            raise Unavailable(str(err)) from None

    async def read(self, job_id: str) -> dict[str, Any]:
        if job_id in self.states:
            return self.states[job_id]
        try:
            return await self.off_loop(self.store.read, job_id)
        except KeyError:
            raise NotFound(f"no evaluation job {excerpt(job_id, 40)!r}") from None
        except StoreUnavailable as err:
            raise Unavailable(str(err)) from None

    async def _run(self, state: dict[str, Any], plan: Plan, request: dict[str, Any] | None = None) -> None:
        writer = JobWriter(self.store, state, self.off_loop)
        try:
            if request is not None:
                await self.off_loop(self.store.create, dict(state), request)
            state["status"] = "running"
            await writer.save()
        except StoreUnavailable as err:  # the job runs anyway; its row is written when the store is back
            log.warning("evaluation job %s: %s", state["id"], err)
        last_write = time.monotonic()

        async def progress(done: int) -> None:
            nonlocal last_write
            state["done"] = done
            if time.monotonic() - last_write >= PROGRESS_WRITE_S:
                last_write = time.monotonic()
                await self._quietly(writer.save())

        async def heartbeat() -> None:  # long chunks: the row still says this replica is alive
            while True:
                await asyncio.sleep(self.store.heartbeat_s)
                await self._quietly(writer.save())

        beating = asyncio.create_task(heartbeat())
        try:
            answer = await self.execute(plan, progress)
            state.update(status="done", done=state["total"], result=answer.model_dump(mode="json"))
        except Exception as err:  # noqa: BLE001 - a job's failure is reported in the job, never lost
            state.update(status="failed", error=failure_text(err))
        finally:
            beating.cancel()
            await self._quietly(writer.finish())
            self.running.pop(state["id"], None)
            self.states.pop(state["id"], None)  # from now on read from its row

    @staticmethod
    async def _quietly(write: Awaitable[None]) -> None:
        """A write that may fail (the store unavailable for a while): logged, the job goes on."""
        try:
            await write
        except StoreUnavailable as err:
            log.warning("evaluation jobs: %s", err)

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
                    self.reserved += 1  # the slot is this adoption's from now on
                    try:
                        await self._adopt(job)
                    finally:
                        self.reserved -= 1
            except Exception as err:  # noqa: BLE001 - the adopter must outlive any one bad job or a store outage
                log.warning("evaluation jobs: adopting stale jobs failed: %s: %s", type(err).__name__, err)

    async def _adopt(self, job: dict[str, Any]) -> None:
        attempt = job.get("attempts", 1) + 1
        if not await self.off_loop(self.store.claim, job["id"], attempt):
            return  # another replica took it
        request = await self.off_loop(self.store.load_request, job["id"])
        if request is None or attempt > self.store.max_attempts:
            why = "its request was not saved" if request is None else f"it started {attempt - 1} times"
            await self.off_loop(self.store.finish, {**job, "attempts": attempt, "status": "interrupted",
                                                    "error": f"the replica running this job stopped and {why}; "
                                                             "submit it again"})
            return
        state = {**job, "status": "queued", "done": 0, "attempts": attempt, "error": None}
        state.pop("updated_at", None)
        try:  # checked again: the models, limits or data may have changed since it was submitted
            plan = await self.plan(EvaluateRequest.model_validate(request))
        except Exception as err:  # noqa: BLE001 - a job that cannot start again ends failed, never claimed and silent
            await self.off_loop(self.store.finish, {**state, "status": "failed", "error": failure_text(err)})
            return
        state["total"] = len(plan.records)
        self.states[job["id"]] = state
        self.running[job["id"]] = asyncio.create_task(self._run(state, plan))
