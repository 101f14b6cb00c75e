"""One ingress replica's state, what the routes work with: the config, the model catalog, the
planner, the job runner and a thread pool. `app.EvaluateAPI` (the Serve deployment) is this class
with the deployment's constructor; without Serve (tests) it is built directly. No Ray import."""

from __future__ import annotations

import asyncio
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from advdistill.config import ExperimentConfig
from advdistill.serve import execution
from advdistill.serve.catalog import Catalog
from advdistill.serve.execution import Progress
from advdistill.serve.guard import GuardSettings
from advdistill.serve.job_runner import JobRunner
from advdistill.serve.jobs import JobStore
from advdistill.serve.planning import Plan, Planner
from advdistill.serve.schemas import EvaluateResponse

OFF_LOOP_THREADS = 4


class EvaluationService:
    """`models`: name → deployment handle of each configured model; `descriptions`: what GET
    /models says of them; `tokenizers`: name → tokenizer; `checkpoints`: the on-demand
    deployment's handle (None: `serve.on_demand` off)."""

    def __init__(self, cfg: ExperimentConfig, models: dict[str, Any], descriptions: list[dict[str, Any]],
                 tokenizers: dict[str, Any], checkpoints: Any = None):
        self.cfg = cfg
        self.started = int(time.time())  # /v1/models' `created`
        self.token = os.environ.get(cfg.serve.token_env) or None
        # Tokenising, loading and scoring run here, never on the event loop: /healthz answers
        # while any request is served.
        self.pool = ThreadPoolExecutor(max_workers=OFF_LOOP_THREADS, thread_name_prefix="evaluate")
        self.catalog = Catalog(models, descriptions, tokenizers, cfg.serve.checkpoint_root, checkpoints,
                               cfg.serve.max_models_per_replica, self.off_loop, cfg.serve.load_failure_ttl_s)
        self.planner = Planner(cfg, self.catalog, self.off_loop)
        self.jobs = JobRunner(JobStore(cfg.serve.jobs_folder, cfg.serve.job_heartbeat_s, cfg.serve.job_attempts),
                              cfg.serve.max_concurrent_jobs, self.planner.evaluation, self.evaluate, self.off_loop)

    def guard_settings(self) -> GuardSettings:
        return GuardSettings(self.token, self.cfg.serve.max_body_bytes, self.cfg.serve.body_timeout_s)

    async def off_loop(self, fn: Callable, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        """`fn(*args, **kwargs)` in the thread pool; asyncio.TimeoutError after `timeout` s (the
        thread runs on to its end, unseen)."""
        future = asyncio.get_running_loop().run_in_executor(self.pool, lambda: fn(*args, **kwargs))
        return await (asyncio.wait_for(future, timeout) if timeout else future)

    async def evaluate(self, plan: Plan, progress: Progress | None = None) -> EvaluateResponse:
        return await execution.evaluate(plan, self.cfg.eval.engine.batch_size, self.off_loop, progress)
