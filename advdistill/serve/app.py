"""Ray Serve application: distilled checkpoints (and optionally the teacher) behind FastAPI.

    POST /evaluate   {model, items | dataset, sampling?} → SPEC §7 metrics + per-item results
    POST /evaluations  the same body → 202 and a job id at once (long evaluations; `serve.jobs`)
    GET  /evaluations/{id}  status, items done / total, and when done the /evaluate answer
    GET  /models     what is served, from which checkpoint, with which prompt settings
    GET  /healthz    liveness
    GET  /docs       OpenAPI

One `ModelServer` deployment per model holds an engine; requests reach it in chunks that
`@serve.batch` merges across concurrent requests into single engine calls — one call's failure
is that call's alone; a chunk whose replica dies under it is retried on the replica Serve starts
instead (`REPLICA_ATTEMPTS`). The ingress scores with the offline evaluator's own functions, so both
report the same numbers.
This module holds the deployments and the builder; the request and error schemas are in
`serve.schemas`, the checks before FastAPI (token, body size) and the path rules in `serve.guard`.

Input discipline, in this order (every bad request is a 4xx, never a 500):
- 401 before anything is read: with the env var named by `serve.token_env` set, a request without
  `Authorization: Bearer <token>` is refused before its body is parsed (`RequestGuard`, an ASGI
  middleware; /healthz and the OpenAPI pages stay open).
- 413 for a body over `serve.max_body_bytes`, more items than `serve.max_items`, `max_tokens` over
  `serve.max_tokens_limit`, a dataset file over `serve.max_dataset_bytes`.
- 422 naming the field at fault: pydantic validation (every string and list has a length limit;
  NaN/Infinity, NUL bytes and lone surrogates are refused), references a task cannot judge
  (`9^{9^{9}}` for a number task), `few_shot` beyond the exemplars available, a prompt longer than
  the served model's context minus `max_tokens` (checked with the model's tokenizer before
  anything is generated), a file that is not a dataset or holds no usable record. Validation
  errors quote at most a short excerpt of the input.
- 404 for an unknown model or a dataset path that does not resolve to a file inside
  `serve.data_root` (no `..`, absolute paths, symlinks out or hidden folders such as `.git`).

The ingress never blocks its event loop: tokenising, dataset loading (time-bounded by
`serve.load_timeout_s`; local files only unless `serve.allow_hub`) and scoring (each math-verify
comparison bounded in a worker process, `scoring.math_verify_pool`) run in a thread pool, so
/healthz answers while any request is served.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError

from advdistill.config import REPO, DatasetConfig, ExperimentConfig, load_config, with_overrides
from advdistill.data.loaders import DATASET_SUFFIXES, DatasetError, checked_record, load_records
from advdistill.evaluation.evaluator import score_predictions
from advdistill.evaluation.metrics import summarize_predictions
from advdistill.generation.engines import GenerationParams
from advdistill.generation.rows import PromptTooLong, fit_context, generate_rows
from advdistill.prompts import exemplars_for
from advdistill.serve.guard import RequestGuard, bearer_ok, inside, inside_location, is_file
from advdistill.serve.jobs import HEARTBEAT_S, JobStore, job_state, new_job_id
from advdistill.serve.schemas import (
    AUTH_RESPONSES,
    ERROR_RESPONSES,
    MAX_ERRORS_SHOWN,
    DatasetRef,
    EvaluateRequest,
    EvaluateResponse,
    EvaluationJob,
    Health,
    JOB_LIMIT_RESPONSE,
    ModelList,
    RequestInvalid,
    excerpt,
    issue,
    on_request_invalid,
    on_validation_error,
)
from advdistill.storage import is_uri
from advdistill.tasks import BadRow, get_task, task_names

api = FastAPI(
    title="AdvDistill evaluation API",
    description="Accuracy and behaviour (verbosity, degeneracy, template adherence) of served models.",
    version="0.1.0",
)
api.add_exception_handler(RequestValidationError, on_validation_error)
api.add_exception_handler(RequestInvalid, on_request_invalid)
api.add_middleware(RequestGuard)

# ------------------------------------------------------------------------------ model servers
# (Serve pickles each deployment class where it is decorated: what its methods use is defined above.)

# Graceful shutdown waits this long for requests in flight (Serve's default is 20 s): SIGINT to
# `serve run` ends it in seconds even while long requests are being served.
GRACEFUL_SHUTDOWN_S = 5.0
REPLICA_ATTEMPTS = 3  # tries of one chunk when its model replica dies under it


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=64,
                  graceful_shutdown_timeout_s=GRACEFUL_SHUTDOWN_S, graceful_shutdown_wait_loop_s=0.5)
class ModelServer:
    """One model, one engine; chunks from concurrent requests are merged into engine calls."""

    def __init__(self, path: str, cfg: dict[str, Any]):
        from advdistill.generation.engines import make_engine

        self.cfg = ExperimentConfig.model_validate(cfg)
        self.engine = make_engine(path, self.cfg.eval.engine)

    async def generate(self, records: list[dict[str, Any]], params: dict[str, Any], few_shot: int) -> dict[str, Any]:
        """{"rows": generated rows} or {"error": why, "client": whether the request is at fault}."""
        return await self._batched((records, params, few_shot))

    def _generate(self, records: list[dict[str, Any]], params: GenerationParams, few_shot: int, seed: int):
        return generate_rows(self.engine, records, params, prompt=self.cfg.prompt, few_shot=few_shot, seed=seed,
                             max_model_len=self.cfg.eval.engine.max_model_len)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _batched(self, calls: list[tuple[list[dict[str, Any]], dict[str, Any], int]]) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = [{"rows": []} for _ in calls]
        # Calls with the same sampling run as one engine call.
        by_params: dict[str, list[int]] = {}
        for index, (_, params, few_shot) in enumerate(calls):
            by_params.setdefault(json.dumps([params, few_shot], sort_keys=True), []).append(index)
        for key, indices in by_params.items():
            params_dict, few_shot = json.loads(key)
            seed = params_dict.pop("seed", 0)
            try:
                params = GenerationParams(**params_dict)
            except (TypeError, ValueError) as err:
                for i in indices:
                    results[i] = {"error": str(err), "client": True}
                continue
            try:
                # vLLM's offline engine is synchronous: keep the replica's event loop free meanwhile.
                rows = await asyncio.to_thread(self._generate, [r for i in indices for r in calls[i][0]], params,
                                               few_shot, seed)
            except Exception:  # noqa: BLE001 - one call's bad input must not fail the others merged with it
                for i in indices:
                    results[i] = await self._alone(calls[i][0], params, few_shot, seed)
                continue
            at = 0
            for i in indices:
                n = len(calls[i][0])
                results[i] = {"rows": rows[at : at + n]}
                at += n
        return results

    async def _alone(self, records: list[dict[str, Any]], params: GenerationParams, few_shot: int,
                     seed: int) -> dict[str, Any]:
        try:
            return {"rows": await asyncio.to_thread(self._generate, records, params, few_shot, seed)}
        except (PromptTooLong, ValueError) as err:
            return {"error": str(err), "client": True}
        except Exception as err:  # noqa: BLE001
            return {"error": f"{type(err).__name__}: {err}", "client": False}


# ------------------------------------------------------------------------------ the ingress


@dataclass(frozen=True)
class Plan:
    """A checked evaluation request: the records to generate (those that fit the context), how,
    and what was left out (dataset requests only; None for items)."""

    model: str
    records: list[dict[str, Any]]
    group_by: str | None
    quarantined: list[dict[str, Any]] | None
    few_shot: int
    params: dict[str, Any]


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=256,
                  graceful_shutdown_timeout_s=GRACEFUL_SHUTDOWN_S, graceful_shutdown_wait_loop_s=0.5)
@serve.ingress(api)
class EvaluateAPI:
    def __init__(self, models: dict[str, Any], descriptions: list[dict[str, Any]], cfg: dict[str, Any],
                 tokenizer_paths: dict[str, str] | None = None):
        from transformers import AutoTokenizer

        from advdistill.scoring.math_verify_pool import warm_up

        warm_up()  # this replica scores every answer: start math-verify's workers before the first one
        self.models = models
        self.descriptions = {d["name"]: d for d in descriptions}
        self.cfg = ExperimentConfig.model_validate(cfg)
        self.token = os.environ.get(self.cfg.serve.token_env) or None
        # Prompts are checked against each model's context with its own tokenizer, here, before
        # any chunk reaches a model server.
        from advdistill.storage import local_model  # a checkpoint on a URI: its tokenizer files, fetched here

        self.tokenizers = {name: AutoTokenizer.from_pretrained(local_model(path, weights=False))
                           for name, path in (tokenizer_paths or {}).items()}
        # Tokenising, loading and scoring run here, never on the event loop.
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="evaluate")
        self.jobs = JobStore(self.cfg.serve.jobs_folder)
        self.running_jobs: dict[str, asyncio.Task] = {}
        self.job_states: dict[str, dict[str, Any]] = {}  # this replica's unfinished jobs, updated in place

    async def _off_loop(self, fn: Callable, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        future = asyncio.get_running_loop().run_in_executor(self.pool, lambda: fn(*args, **kwargs))
        return await (asyncio.wait_for(future, timeout) if timeout else future)

    def _authorize(self, request: Request) -> None:
        # RequestGuard checks first, before the body is read; this is the same check again.
        if self.token is not None and not bearer_ok(request.headers.get("authorization", "").encode("latin-1", "replace"),
                                                     self.token):
            raise HTTPException(401, "missing or invalid bearer token", headers={"WWW-Authenticate": "Bearer"})

    @api.get("/healthz")
    async def healthz(self) -> Health:
        return Health(status="ok")

    @api.get("/models", responses=AUTH_RESPONSES)
    async def list_models(self, request: Request) -> ModelList:
        self._authorize(request)
        return ModelList(models=list(self.descriptions.values()))

    @api.post("/evaluate", responses=ERROR_RESPONSES)
    async def evaluate(self, body: EvaluateRequest, request: Request) -> EvaluateResponse:
        self._authorize(request)
        return await self._execute(await self._plan(body))

    @api.post("/evaluations", status_code=202, responses={**ERROR_RESPONSES, 429: JOB_LIMIT_RESPONSE})
    async def submit_evaluation(self, body: EvaluateRequest, request: Request) -> EvaluationJob:
        """The same body as /evaluate; answers at once with a job to poll. Every check /evaluate
        makes happens here first, so a bad request is a 4xx now, not a failed job later."""
        self._authorize(request)
        plan = await self._plan(body)
        # No await between the count and the task's creation: concurrent submissions cannot both pass.
        active = sum(not task.done() for task in self.running_jobs.values())
        if active >= self.cfg.serve.max_concurrent_jobs:
            raise HTTPException(429, f"{active} evaluation jobs are running (serve.max_concurrent_jobs); "
                                     "retry when one is done", headers={"Retry-After": "30"})
        state = job_state(new_job_id(), body.model, total=len(plan.records))
        self.job_states[state["id"]] = state  # readable at once, before its file is written
        self.running_jobs[state["id"]] = asyncio.create_task(self._run_job(state, plan))
        return EvaluationJob.model_validate(state)

    @api.get("/evaluations/{job_id}", responses={**AUTH_RESPONSES, 404: ERROR_RESPONSES[404]})
    async def get_evaluation(self, job_id: str, request: Request) -> EvaluationJob:
        self._authorize(request)
        try:
            state = self.job_states.get(job_id) or await self._off_loop(self.jobs.read, job_id)
        except KeyError:
            raise HTTPException(404, f"no evaluation job {excerpt(job_id, 40)!r}") from None
        return EvaluationJob.model_validate(state)

    async def _run_job(self, state: dict[str, Any], plan: "Plan") -> None:
        state["status"] = "running"
        await self._off_loop(self.jobs.write, dict(state))
        last_write = time.monotonic()

        async def progress(done: int) -> None:
            nonlocal last_write
            state["done"] = done
            if time.monotonic() - last_write >= 1.0:  # at most one file write a second
                last_write = time.monotonic()
                await self._off_loop(self.jobs.write, dict(state))

        async def heartbeat() -> None:  # long chunks: the file still says this replica is alive
            while True:
                await asyncio.sleep(HEARTBEAT_S)
                await self._off_loop(self.jobs.write, dict(state))

        beating = asyncio.create_task(heartbeat())
        try:
            answer = await self._execute(plan, progress)
            state.update(status="done", done=state["total"], result=answer.model_dump(mode="json"))
        except HTTPException as err:
            state.update(status="failed", error=f"{err.status_code}: {err.detail}")
        except RequestInvalid as err:
            state.update(status="failed", error=f"422: {err}")
        except Exception as err:  # noqa: BLE001 - a job's failure is reported in the job, never lost
            state.update(status="failed", error=excerpt(f"{type(err).__name__}: {err}", 500))
        finally:
            beating.cancel()
            await self._off_loop(self.jobs.write, state)
            self.running_jobs.pop(state["id"], None)
            self.job_states.pop(state["id"], None)  # from now on read from its file

    async def _plan(self, body: EvaluateRequest) -> "Plan":
        """Every check before generation; what to generate and how."""
        if body.model not in self.models:
            raise HTTPException(404, f"unknown model {body.model!r}; served: {sorted(self.models)}")
        limits = self.cfg.serve
        max_tokens = body.sampling.max_tokens or self.cfg.eval.max_tokens
        if max_tokens > limits.max_tokens_limit:
            raise HTTPException(413, f"max_tokens {max_tokens} exceeds the limit of {limits.max_tokens_limit}")
        if body.items is not None and len(body.items) > limits.max_items:
            raise HTTPException(413, f"{len(body.items)} items exceed the limit of {limits.max_items} per request")
        records, group_by, quarantined = await self._records(body)
        few_shot = body.sampling.few_shot if body.sampling.few_shot is not None else self.descriptions[body.model]["few_shot"]
        self._check_few_shot(records, few_shot)
        records, quarantined = await self._fit_context(body, records, few_shot, max_tokens, quarantined)
        temperature = body.sampling.temperature if body.sampling.temperature is not None else self.cfg.eval.temperature
        params = {"n": 1, "temperature": temperature, "top_p": 1.0, "max_tokens": max_tokens, "seed": body.sampling.seed}
        return Plan(body.model, records, group_by, quarantined if body.dataset is not None else None, few_shot, params)

    async def _execute(self, plan: "Plan", progress: Callable[[int], Awaitable[None]] | None = None) -> EvaluateResponse:
        """Generate in chunks on the model's replicas, score here; `progress(items generated)`
        after each chunk."""
        size = self.cfg.eval.engine.batch_size
        handle = self.models[plan.model]
        done = 0

        async def chunk(records: list[dict[str, Any]]) -> dict[str, Any]:
            nonlocal done
            for attempt in range(1, REPLICA_ATTEMPTS + 1):
                try:
                    result = await handle.generate.remote(records, plan.params, plan.few_shot)
                    break
                except (RayActorError, ActorUnavailableError):
                    # The replica died mid-chunk (killed, OOM, node lost): Serve starts another and
                    # the handle routes to it. Generation is deterministic per item, so a retry
                    # gives the same rows.
                    if attempt == REPLICA_ATTEMPTS:
                        raise HTTPException(503, f"the model's replicas failed {attempt} times on one chunk") from None
            done += len(records)
            if progress is not None:
                await progress(done)
            return result

        chunks = await asyncio.gather(*[chunk(plan.records[i : i + size]) for i in range(0, len(plan.records), size)])
        failed = [c for c in chunks if "error" in c]
        if failed:
            if all(c["client"] for c in failed):
                raise RequestInvalid([issue(["body"], failed[0]["error"])])
            raise HTTPException(503, f"generation failed: {excerpt(failed[0]['error'], 300)}")
        generated = [row for chunk in chunks for row in chunk["rows"]]
        predictions = await self._off_loop(score_predictions, generated)
        metrics = summarize_predictions(predictions, group_by=plan.group_by)
        answer = {"model": plan.model, "few_shot": plan.few_shot, "metrics": metrics, "results": predictions}
        if plan.quarantined is not None:
            answer["quarantined"] = plan.quarantined[:MAX_ERRORS_SHOWN]
            answer["quarantined_count"] = len(plan.quarantined)
        return EvaluateResponse.model_validate(answer)

    # -- the checks before generation ------------------------------------------------------

    def _check_few_shot(self, records: list[dict[str, Any]], few_shot: int) -> None:
        for task in sorted({r["task"] for r in records}):
            try:
                exemplars_for(task, few_shot, self.cfg.prompt.exemplars_path)
            except ValueError as err:
                raise RequestInvalid([issue(["body", "sampling", "few_shot"], f"task {task}: {err}",
                                            value=str(few_shot))]) from None

    async def _fit_context(self, body: EvaluateRequest, records: list[dict[str, Any]], few_shot: int, max_tokens: int,
                           quarantined: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Items whose prompt leaves no room for max_tokens are a 422 naming them; dataset rows are
        quarantined (reported in the answer), as the offline evaluator does."""
        tokenizer = self.tokenizers.get(body.model)
        if tokenizer is None:
            return records, quarantined
        fitting, too_long = await self._off_loop(fit_context, records, tokenizer,
                                                 max_model_len=self.cfg.eval.engine.max_model_len,
                                                 max_tokens=max_tokens, prompt=self.cfg.prompt, few_shot=few_shot)
        if body.items is not None and too_long:
            position = {r["id"]: i for i, r in enumerate(records)}
            raise RequestInvalid([issue(["body", "items", position[q["id"]], "question"], q["reason"])
                                  for q in too_long])
        quarantined = quarantined + too_long
        if not fitting:
            raise RequestInvalid([issue(["body", "dataset"], f"no record of the dataset fits the model's context: "
                                                             f"{too_long[0]['reason']}")])
        return fitting, quarantined

    async def _records(self, body: EvaluateRequest) -> tuple[list[dict[str, Any]], str | None, list[dict[str, Any]]]:
        if body.items is not None:
            records, issues = [], []
            for i, item in enumerate(body.items):
                record = {"id": item.id or f"item-{i:05d}", "task": item.task, "question": item.question,
                          "reference": item.reference, "choices": item.choices, "meta": {}}
                try:
                    records.append(checked_record(record, get_task(item.task)))
                except BadRow as err:
                    field = "choices" if "choices" in str(err) and "reference" not in str(err) else "reference"
                    issues.append(issue(["body", "items", i, field], str(err), value=record[field]))
            if issues:
                raise RequestInvalid(issues)
            return records, None, []
        return await self._load_dataset(body.dataset)

    async def _load_dataset(self, ref: DatasetRef) -> tuple[list[dict[str, Any]], str | None, list[dict[str, Any]]]:
        limits = self.cfg.serve
        spec = get_task(ref.name)
        path = None
        if ref.path is not None:
            path = self._dataset_file(ref.path)
        elif spec.generate is None and not limits.allow_hub:
            raise RequestInvalid([issue(["body", "dataset", "path"], f"{ref.name} is a hub dataset and this server "
                                        "loads none from the hub: name a file inside its data root")])
        if ref.limit is not None and ref.limit > limits.max_items:
            raise HTTPException(413, f"limit {ref.limit} exceeds the limit of {limits.max_items} per request")
        try:
            config = DatasetConfig(name=ref.name, split=ref.split, path=path, limit=ref.limit)
        except ValueError as err:  # a split the task does not have
            why = err.errors()[0]["msg"] if hasattr(err, "errors") else str(err)
            raise HTTPException(404, f"dataset not available: {excerpt(why, 300)}") from None
        try:
            loaded = await self._off_loop(load_records, config, timeout=limits.load_timeout_s)
        except asyncio.TimeoutError:
            raise HTTPException(504, f"loading dataset {ref.name!r} took longer than {limits.load_timeout_s} s") from None
        except DatasetError as err:
            raise RequestInvalid([issue(["body", "dataset", "path"], str(err).replace(str(Path(limits.data_root)), ""),
                                        value=ref.path)]) from None
        except (ValueError, FileNotFoundError) as err:
            raise HTTPException(404, f"dataset not available: {excerpt(str(err), 300)}") from None
        except Exception as err:  # noqa: BLE001 - the hub (only with allow_hub) may be unreachable
            raise HTTPException(502, f"could not load dataset {ref.name!r}: {type(err).__name__}") from None
        if not loaded.records:
            first = loaded.quarantined[0] if loaded.quarantined else None
            why = f"; first: line {first.get('line')}: {first['reason']}" if first else ""
            raise RequestInvalid([issue(["body", "dataset"], f"no usable record in {ref.path or ref.name} "
                                                             f"({len(loaded.quarantined)} rows quarantined{why})")])
        if len(loaded.records) > limits.max_items:
            raise HTTPException(413, f"{len(loaded.records)} records exceed the limit of {limits.max_items} per request: "
                                     "give a limit")
        quarantined = [{k: v for k, v in q.items() if k != "source"} for q in loaded.quarantined]
        return loaded.records, spec.group_by, quarantined

    def _dataset_file(self, name: str) -> str:
        """The file a request names: a regular dataset file inside the data root, not in a hidden
        folder; 404 (never a read) otherwise, 413 over the size limit."""
        limits = self.cfg.serve
        root = Path(limits.data_root)
        resolved = inside(root, name)
        parts = Path(name).parts
        if resolved is None or any(p.startswith(".") and p not in (".", "..") for p in parts) or not is_file(resolved):
            raise HTTPException(404, f"dataset file {excerpt(name, 200)!r} not found")
        if resolved.suffix not in DATASET_SUFFIXES:
            raise RequestInvalid([issue(["body", "dataset", "path"], f"not a dataset file: give a "
                                        f"{', '.join(DATASET_SUFFIXES)} file", value=name)])
        size = resolved.stat().st_size
        if size > limits.max_dataset_bytes:
            raise HTTPException(413, f"dataset file of {size} bytes exceeds the limit of {limits.max_dataset_bytes}")
        return str(resolved)


# ------------------------------------------------------------------------------ the builder

SERVE_FIELDS = ("checkpoint_root", "data_root", "max_items", "max_tokens_limit", "token_env", "max_body_bytes",
                "max_dataset_bytes", "load_timeout_s", "allow_hub", "jobs_folder", "max_concurrent_jobs")


def check_data_root(data_root: Path) -> None:
    """A data root is a data folder: never the repository (it would serve `.git`, `.venv`), a
    home folder or the file system's root."""
    forbidden = {REPO.resolve(), Path.home().resolve(), Path("/")}
    if data_root in forbidden or (data_root / ".git").exists():
        raise ValueError(f"serve.data_root {data_root} is not a data folder (a repository, home or root folder); "
                         "point it at a folder of dataset files, e.g. data/")


def build_app(args: dict[str, Any]) -> serve.Application:
    """Application builder for `serve run` / `serve deploy` (see serve_configs/evaluate.yaml).

    args: config (experiment YAML), models: [{name, path, base_model, ray_actor_options?}], any
    `serve.*` field (SERVE_FIELDS), and api_ray_actor_options (the ingress replica's, e.g. a
    runtime_env with the token variable)."""
    args = dict(args)
    config = args.pop("config", None)
    cfg = with_overrides(load_config(REPO / config if config else None),
                         {f"serve.{k}": args.pop(k) for k in SERVE_FIELDS if k in args})
    models = args.pop("models", None)
    if not models:
        raise ValueError("build_app needs a non-empty 'models' list of {name, path, base_model}")
    # Relative roots are relative to the repository, not to wherever Serve builds the app (the
    # builder runs in a Ray task whose working directory is not the caller's).
    root, data_root = (REPO / cfg.serve.checkpoint_root).resolve(), (REPO / cfg.serve.data_root).resolve()
    # A checkpoint root on shared storage (s3://…, advdistill.storage): models are folders under
    # it, which each replica fetches to its own node.
    remote_root = cfg.serve.checkpoint_root if is_uri(cfg.serve.checkpoint_root) else None
    check_data_root(data_root)
    for task in task_names():  # a base model's default few_shot must be servable for every task
        exemplars_for(task, cfg.prompt.few_shot, cfg.prompt.exemplars_path)
    cfg = with_overrides(cfg, {"serve.checkpoint_root": remote_root or str(root), "serve.data_root": str(data_root),
                               "serve.jobs_folder": str((REPO / cfg.serve.jobs_folder).resolve())})
    handles, descriptions, tokenizer_paths = {}, [], {}
    for spec in models:
        name, path = spec["name"], spec["path"]
        resolved = inside_location(remote_root, path) if remote_root else inside(root, path)
        if resolved is None or not resolved.is_dir():
            raise ValueError(f"model {name!r}: {path!r} is not a folder inside the checkpoint root {root}")
        few_shot = cfg.prompt.few_shot if spec.get("base_model", False) else 0
        options: dict[str, Any] = {"name": f"model-{name}"}
        if spec.get("ray_actor_options"):
            options["ray_actor_options"] = spec["ray_actor_options"]
        handles[name] = ModelServer.options(**options).bind(str(resolved), cfg.model_dump(mode="json"))
        tokenizer_paths[name] = str(resolved)
        descriptions.append({"name": name, "checkpoint": path, "base_model": bool(spec.get("base_model", False)),
                             "few_shot": few_shot, "engine": cfg.eval.engine.engine, "max_tokens": cfg.eval.max_tokens,
                             "max_model_len": cfg.eval.engine.max_model_len})
    ingress = EvaluateAPI
    if args.get("api_ray_actor_options"):
        ingress = EvaluateAPI.options(ray_actor_options={"num_cpus": 0.5, **args.pop("api_ray_actor_options")})
    return ingress.bind(handles, descriptions, cfg.model_dump(mode="json"), tokenizer_paths)
