"""Ray Serve application: distilled checkpoints (and optionally the teacher) behind FastAPI.

    POST /evaluate   {model, items | dataset, sampling?} → SPEC §7 metrics + per-item results
    POST /evaluations  the same body → 202 and a job id at once (long evaluations; `serve.jobs`)
    GET  /evaluations/{id}  status, items done / total, and when done the /evaluate answer
    GET  /models     what is served, from which checkpoint, with which prompt settings; the
                     checkpoints loaded on demand and those available
    GET  /v1/models, POST /v1/completions, POST /v1/chat/completions   OpenAI-compatible
                     (`serve.openai_compat`), streaming included
    GET  /healthz    liveness
    GET  /docs       OpenAPI

`model` is a configured name or the path of any model folder under the checkpoint root: the
latter is served on demand by the multiplexed `checkpoints` deployment (loaded on first use, at
most `serve.max_models_per_replica` engines per replica, least recently used out).

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
from functools import lru_cache
from pathlib import Path
from typing import Any, Awaitable, Callable

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import StreamingResponse
from fastapi.exceptions import RequestValidationError
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError

from advdistill.config import REPO, DatasetConfig, ExperimentConfig, load_config, with_overrides
from advdistill.data.loaders import DATASET_SUFFIXES, DatasetError, checked_record, load_records
from advdistill.evaluation.evaluator import score_predictions
from advdistill.evaluation.metrics import summarize_predictions
from advdistill.generation.base import GenerationParams
from advdistill.generation.rows import PromptTooLong, fit_context, generate_rows, prompt_tokens, too_long_reason
from advdistill.prompts import exemplars_for, render_prompt
from advdistill.serve.guard import RequestGuard, bearer_ok, inside, inside_location, is_file
from advdistill.serve.openai_compat import (
    STREAMED_CHAT_COMPLETION,
    STREAMED_COMPLETION,
    ChatCompletion,
    ChatCompletionRequest,
    CompletionRequest,
    OpenAIModel,
    OpenAIModelList,
    chat_chunk,
    chat_completion,
    completion_chunk,
    new_id,
    sse,
    usage_chunk,
)
from advdistill.serve.openai_compat import Completion as OpenAICompletion
from advdistill.serve.openai_compat import completion as openai_completion
from advdistill.serve.jobs import JobStore, job_state, new_job_id
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
    OnDemand,
    RequestInvalid,
    excerpt,
    issue,
    on_request_invalid,
    on_validation_error,
)
from advdistill.storage import is_uri, location
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


class Generating:
    """What a model replica does with its engine: `generate` (evaluation chunks, merged across
    concurrent requests by `@serve.batch`), `complete` and `stream` (raw prompts, the OpenAI
    routes). Subclasses say which engine serves a request (`_engine`)."""

    cfg: ExperimentConfig

    async def _engine(self) -> Any:
        raise NotImplementedError

    async def generate(self, records: list[dict[str, Any]], params: dict[str, Any], few_shot: int) -> dict[str, Any]:
        """{"rows": generated rows} or {"error": why, "client": whether the request is at fault}."""
        return await self._batched((records, params, few_shot))

    async def complete(self, prompts: list[str], params: dict[str, Any], seed: int | None) -> list[list[dict[str, Any]]]:
        """Each prompt's choices as {text, num_tokens, finish_reason} (the prompts as given)."""
        engine = await self._engine()
        outputs = await asyncio.to_thread(engine.generate, prompts, GenerationParams(**params),
                                          None if seed is None else [seed] * len(prompts))
        return [[{"text": c.text, "num_tokens": c.num_tokens, "finish_reason": c.finish_reason} for c in choices]
                for choices in outputs]

    async def stream(self, prompt: str, params: dict[str, Any], seed: int | None):
        """The prompt's choices as they are generated: {index, text, num_tokens, finish_reason}."""
        engine = await self._engine()
        deltas = engine.stream(prompt, GenerationParams(**params), seed)
        end = object()
        try:
            while (delta := await asyncio.to_thread(next, deltas, end)) is not end:
                yield {"index": delta.index, "text": delta.text, "num_tokens": delta.num_tokens,
                       "finish_reason": delta.finish_reason}
        finally:
            try:
                deltas.close()  # a client gone mid-stream: the engine drops the request
            except ValueError:  # still running in its thread: it ends at max_tokens
                pass

    def _generate(self, engine: Any, records: list[dict[str, Any]], params: GenerationParams, few_shot: int, seed: int):
        return generate_rows(engine, records, params, prompt=self.cfg.prompt, few_shot=few_shot, seed=seed,
                             max_model_len=self.cfg.eval.engine.max_model_len)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _batched(self, calls: list[tuple[list[dict[str, Any]], dict[str, Any], int]]) -> list[dict[str, Any]]:
        # One batch holds one model's calls (Serve splits batches by multiplexed model id).
        engine = await self._engine()
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
                rows = await asyncio.to_thread(self._generate, engine, [r for i in indices for r in calls[i][0]],
                                               params, few_shot, seed)
            except Exception:  # noqa: BLE001 - one call's bad input must not fail the others merged with it
                for i in indices:
                    results[i] = await self._alone(engine, calls[i][0], params, few_shot, seed)
                continue
            at = 0
            for i in indices:
                n = len(calls[i][0])
                results[i] = {"rows": rows[at : at + n]}
                at += n
        return results

    async def _alone(self, engine: Any, records: list[dict[str, Any]], params: GenerationParams, few_shot: int,
                     seed: int) -> dict[str, Any]:
        try:
            return {"rows": await asyncio.to_thread(self._generate, engine, records, params, few_shot, seed)}
        except (PromptTooLong, ValueError) as err:
            return {"error": str(err), "client": True}
        except Exception as err:  # noqa: BLE001
            return {"error": f"{type(err).__name__}: {err}", "client": False}


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=64,
                  graceful_shutdown_timeout_s=GRACEFUL_SHUTDOWN_S, graceful_shutdown_wait_loop_s=0.5)
class ModelServer(Generating):
    """One configured model, one engine."""

    def __init__(self, path: str, cfg: dict[str, Any]):
        from advdistill.generation.factory import make_engine

        self.cfg = ExperimentConfig.model_validate(cfg)
        self.engine = make_engine(path, self.cfg.eval.engine)

    async def _engine(self) -> Any:
        return self.engine


class LoadedCheckpoint:
    """An on-demand checkpoint's engine; Serve's multiplexer calls `__del__` when it evicts it
    (least recently used first), which frees the engine. Idempotent: garbage collection may call
    it again."""

    def __init__(self, engine: Any, on_close: Callable[[], None]):
        self.engine, self._on_close = engine, on_close

    def __del__(self) -> None:
        engine, self.engine = getattr(self, "engine", None), None
        if engine is not None:
            engine.close()
            self._on_close()


def checkpoint_server(max_models_per_replica: int):
    """The deployment that serves any checkpoint folder under the checkpoint root on demand
    (Ray Serve model multiplexing: the model id is the folder, relative to the root; each replica
    keeps at most `max_models_per_replica` engines, least recently used out)."""

    @serve.deployment(name="checkpoints", ray_actor_options={"num_cpus": 1}, max_ongoing_requests=64,
                      graceful_shutdown_timeout_s=GRACEFUL_SHUTDOWN_S, graceful_shutdown_wait_loop_s=0.5)
    class CheckpointServer(Generating):
        def __init__(self, root: str, cfg: dict[str, Any]):
            self.root, self.cfg = root, ExperimentConfig.model_validate(cfg)
            self.loaded_ids: list[str] = []  # this replica's engines, oldest use first

        @serve.multiplexed(max_num_models_per_replica=max_models_per_replica)
        async def load(self, model_id: str) -> LoadedCheckpoint:
            from advdistill.generation.factory import make_engine

            path = inside_location(self.root, model_id) if is_uri(self.root) else inside(Path(self.root), model_id)
            if path is None:  # the ingress checked it; a direct handle call may not have
                raise ValueError(f"{model_id!r} is not inside the checkpoint root")
            engine = await asyncio.to_thread(make_engine, str(path), self.cfg.eval.engine)
            self.loaded_ids.append(model_id)
            return LoadedCheckpoint(engine, lambda: self._forget(model_id))

        def _forget(self, model_id: str) -> None:
            if model_id in self.loaded_ids:
                self.loaded_ids.remove(model_id)

        async def _engine(self) -> Any:
            model_id = serve.get_multiplexed_model_id()
            loaded = await self.load(model_id)
            self._forget(model_id)
            self.loaded_ids.append(model_id)  # most recently used last, as Serve's LRU orders them
            return loaded.engine

        async def loaded(self) -> list[str]:
            return list(self.loaded_ids)

    return CheckpointServer


# ------------------------------------------------------------------------------ the ingress


@dataclass(frozen=True)
class Served:
    """What a request's `model` names: a configured model, or a checkpoint folder under the
    checkpoint root served on demand (`model_id` its path relative to the root)."""

    name: str
    handle: Any
    few_shot: int
    tokenizer: Any | None


MAX_AVAILABLE_LISTED = 200  # checkpoint folders GET /models lists
AVAILABLE_DEPTH = 5  # how deep under the checkpoint root it looks (runs/NAME/seed-0/train-sft/final)


def checkpoint_folders(root: str, depth: int = AVAILABLE_DEPTH, limit: int = MAX_AVAILABLE_LISTED) -> list[str]:
    """Model folders (a config.json beside weights) under `root`, relative to it: what requests
    may name. Hidden folders are never entered."""
    from advdistill.storage import location

    base, found, frontier = location(root), [], [(location(root), 0)]
    while frontier and len(found) < limit:
        folder, level = frontier.pop(0)
        try:
            entries = sorted(folder.iterdir(), key=lambda e: e.name)
        except (OSError, FileNotFoundError):
            continue
        names = {e.name for e in entries}
        if "config.json" in names and any(n.endswith(".safetensors") or n.endswith(".bin") for n in names):
            found.append(str(folder)[len(str(base)):].strip("/") or ".")
            continue
        if level < depth:
            frontier += [(e, level + 1) for e in entries if not e.name.startswith(".") and e.is_dir()]
    return found


@lru_cache(maxsize=16)
def checkpoint_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    from advdistill.storage import local_model

    return AutoTokenizer.from_pretrained(local_model(path, weights=False))


@dataclass(frozen=True)
class Plan:
    """A checked evaluation request: the records to generate (those that fit the context), how,
    and what was left out (dataset requests only; None for items)."""

    model: str
    handle: Any  # the model's replicas (a configured model's deployment, or the checkpoints one)
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
                 tokenizer_paths: dict[str, str] | None = None, checkpoints: Any = None):
        from transformers import AutoTokenizer

        from advdistill.scoring.math_verify_pool import warm_up

        warm_up()  # this replica scores every answer: start math-verify's workers before the first one
        self.models = models
        self.descriptions = {d["name"]: d for d in descriptions}
        self.checkpoints = checkpoints  # any checkpoint folder under the root, on demand (None: off)
        self.started = int(time.time())
        self.cfg = ExperimentConfig.model_validate(cfg)
        self.token = os.environ.get(self.cfg.serve.token_env) or None
        # Prompts are checked against each model's context with its own tokenizer, here, before
        # any chunk reaches a model server.
        from advdistill.storage import local_model  # a checkpoint on a URI: its tokenizer files, fetched here

        self.tokenizers = {name: AutoTokenizer.from_pretrained(local_model(path, weights=False))
                           for name, path in (tokenizer_paths or {}).items()}
        # Tokenising, loading and scoring run here, never on the event loop.
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="evaluate")
        self.jobs = JobStore(self.cfg.serve.jobs_folder, self.cfg.serve.job_heartbeat_s, self.cfg.serve.job_attempts)
        self.running_jobs: dict[str, asyncio.Task] = {}
        self.job_states: dict[str, dict[str, Any]] = {}  # this replica's unfinished jobs, updated in place
        # Serve runs the constructor on the replica's event loop: adopt the jobs of replicas that stopped.
        self.adopter = asyncio.get_running_loop().create_task(self._adopt_stale_jobs())

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
        on_demand = None
        if self.checkpoints is not None:
            root = self.cfg.serve.checkpoint_root
            available, loaded = await asyncio.gather(self._off_loop(checkpoint_folders, root),
                                                     self.checkpoints.loaded.remote())
            on_demand = OnDemand(max_per_replica=self.cfg.serve.max_models_per_replica, loaded=loaded,
                                 available=available)
        return ModelList(models=list(self.descriptions.values()), on_demand=on_demand)

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
        await self._off_loop(self.jobs.save_request, state["id"], body.model_dump(mode="json", exclude_unset=True))  # to start it again
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

    # -- the OpenAI-compatible routes (`serve.openai_compat`) -------------------------------

    @api.get("/v1/models", responses=AUTH_RESPONSES)
    async def openai_models(self, request: Request) -> OpenAIModelList:
        self._authorize(request)
        names = list(self.models)
        if self.checkpoints is not None:
            names += [m for m in await self.checkpoints.loaded.remote() if m not in names]
        return OpenAIModelList(data=[OpenAIModel(id=name, created=self.started) for name in names])

    @api.post("/v1/completions", responses={**ERROR_RESPONSES, **STREAMED_COMPLETION})
    async def openai_completions(self, body: CompletionRequest, request: Request) -> OpenAICompletion:
        """Prompts as given (no chat template); `stream: true` answers server-sent events."""
        self._authorize(request)
        served = await self._served(body.model)
        params = self._openai_params(body, body.max_tokens, len(body.prompt))
        counts = await self._openai_context(served, body.prompt, params["max_tokens"], "prompt")
        if body.stream:
            return self._openai_stream(served, body, body.prompt, params, sum(counts), chat=False)
        choices = await self._complete(served, body.prompt, params, body.seed)
        return openai_completion(served.name, choices, sum(counts))

    @api.post("/v1/chat/completions", responses={**ERROR_RESPONSES, **STREAMED_CHAT_COMPLETION})
    async def openai_chat(self, body: ChatCompletionRequest, request: Request) -> ChatCompletion:
        """Messages rendered with the model's own chat template; `stream: true` answers events."""
        self._authorize(request)
        served = await self._served(body.model)
        max_tokens = body.max_completion_tokens or body.max_tokens or self.cfg.eval.max_tokens
        params = self._openai_params(body, max_tokens, 1)
        # The same rendering as every other prompt of the project (`prompts.render_prompt`: the
        # model's chat template, or a plain transcript for a tokenizer without one).
        messages = [m.model_dump(exclude={"name"}) for m in body.messages]
        prompt = await self._off_loop(render_prompt, served.tokenizer, messages)
        counts = await self._openai_context(served, [prompt], params["max_tokens"], "messages")
        if body.stream:
            return self._openai_stream(served, body, [prompt], params, counts[0], chat=True)
        [choices] = await self._complete(served, [prompt], params, body.seed)
        return chat_completion(served.name, choices, counts[0])

    def _openai_params(self, body: Any, max_tokens: int, prompts: int) -> dict[str, Any]:
        limits = self.cfg.serve
        if max_tokens > limits.max_tokens_limit:
            raise HTTPException(413, f"max_tokens {max_tokens} exceeds the limit of {limits.max_tokens_limit}")
        if prompts * body.n > limits.max_items:
            raise HTTPException(413, f"{prompts} prompts x n={body.n} exceed the limit of {limits.max_items} per request")
        params = {"n": body.n, "temperature": body.temperature, "top_p": body.top_p, "max_tokens": max_tokens,
                  "stop": list(body.stop or [])}
        try:
            GenerationParams(**params)
        except ValueError as err:
            raise RequestInvalid([issue(["body", "n"], str(err), value=body.n)]) from None
        return params

    async def _openai_context(self, served: Served, prompts: list[str], max_tokens: int, field: str) -> list[int]:
        """Prompt token counts; a prompt that leaves no room for max_tokens is a 422 naming it."""
        if served.tokenizer is None:
            return [0] * len(prompts)
        counts = await self._off_loop(prompt_tokens, served.tokenizer, prompts)
        limit = self.cfg.eval.engine.max_model_len
        over = [issue(["body", field] + ([i] if field == "prompt" else []), too_long_reason(n, limit, max_tokens))
                for i, n in enumerate(counts) if n + max_tokens > limit]
        if over:
            raise RequestInvalid(over)
        return counts

    async def _complete(self, served: Served, prompts: list[str], params: dict[str, Any],
                        seed: int | None) -> list[list[dict[str, Any]]]:
        for attempt in range(1, REPLICA_ATTEMPTS + 1):
            try:
                return await served.handle.complete.remote(prompts, params, seed)
            except (RayActorError, ActorUnavailableError):
                if attempt == REPLICA_ATTEMPTS:
                    raise HTTPException(503, f"the model's replicas failed {attempt} times") from None
            except ValueError as err:  # the engine refused the request (vLLM's own validation)
                raise RequestInvalid([issue(["body"], str(err))]) from None
            except Exception as err:  # noqa: BLE001 - an engine failure is the server's, never a bare 500
                raise HTTPException(503, f"generation failed: {excerpt(f'{type(err).__name__}: {err}', 300)}") from None
        raise AssertionError("unreachable")

    def _openai_stream(self, served: Served, body: Any, prompts: list[str], params: dict[str, Any],
                       prompt_tokens_total: int, *, chat: bool) -> StreamingResponse:
        """Server-sent events as OpenAI streams them: a chunk per piece of new text (chat: the
        role first), the finish reason on a choice's last chunk, usage if asked, then [DONE]."""
        stream_id, created = new_id("chatcmpl" if chat else "cmpl"), int(time.time())
        handle = served.handle.options(stream=True)

        async def events():
            tokens, started = 0, set()
            try:
                for p, prompt in enumerate(prompts):
                    async for delta in handle.stream.remote(prompt, params, body.seed):
                        index = p * body.n + delta["index"]
                        tokens += delta["num_tokens"]
                        if chat:
                            if index not in started:
                                started.add(index)
                                yield sse(chat_chunk(stream_id, created, served.name, index,
                                                     {"role": "assistant", "content": ""}, None))
                            if delta["text"]:
                                yield sse(chat_chunk(stream_id, created, served.name, index,
                                                     {"content": delta["text"]}, None))
                            if delta["finish_reason"]:
                                yield sse(chat_chunk(stream_id, created, served.name, index, {},
                                                     delta["finish_reason"]))
                        else:
                            yield sse(completion_chunk(stream_id, created, served.name, index, delta["text"],
                                                       delta["finish_reason"]))
            except Exception as err:  # noqa: BLE001 - the status line is sent: report in the stream
                yield sse({"error": {"message": excerpt(f"{type(err).__name__}: {err}", 300), "type": "server_error"}})
                return
            if body.stream_options is not None and body.stream_options.include_usage:
                yield sse(usage_chunk(stream_id, created, served.name, "chat.completion.chunk" if chat
                                      else "text_completion", prompt_tokens_total, tokens))
            yield sse("[DONE]")

        return StreamingResponse(events(), media_type="text/event-stream")

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
                await asyncio.sleep(self.jobs.heartbeat_s)
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
            await self._off_loop(self.jobs.finish, state)
            self.running_jobs.pop(state["id"], None)
            self.job_states.pop(state["id"], None)  # from now on read from its file

    async def _adopt_stale_jobs(self) -> None:
        """Every heartbeat: start again the jobs whose replica stopped (a restart, a crash, a lost
        node), from their saved request; one replica wins each attempt's claim."""
        while True:
            await asyncio.sleep(self.jobs.heartbeat_s)
            try:
                for job in await self._off_loop(self.jobs.stale):
                    if job["id"] in self.running_jobs:
                        continue  # ours, only slow to write
                    if sum(not task.done() for task in self.running_jobs.values()) >= self.cfg.serve.max_concurrent_jobs:
                        break  # at the cap: next heartbeat
                    await self._adopt(job)
            except Exception as err:  # noqa: BLE001 - the adopter must outlive any one bad job file
                print(f"evaluation jobs: adopting stale jobs failed: {type(err).__name__}: {err}", flush=True)

    async def _adopt(self, job: dict[str, Any]) -> None:
        attempt = job.get("attempts", 1) + 1
        if not await self._off_loop(self.jobs.claim, job["id"], attempt):
            return  # another replica took it
        request = await self._off_loop(self.jobs.load_request, job["id"])
        if request is None or attempt > self.jobs.max_attempts:
            why = "its request was not saved" if request is None else f"it started {attempt - 1} times"
            await self._off_loop(self.jobs.finish, {**job, "status": "interrupted",
                                                   "error": f"the replica running this job stopped and {why}; "
                                                            "submit it again"})
            return
        state = {**job, "status": "queued", "done": 0, "attempts": attempt, "error": None}
        try:  # checked again: the models, limits or data may have changed since it was submitted
            plan = await self._plan(EvaluateRequest.model_validate(request))
        except Exception as err:  # noqa: BLE001 - a job that cannot start again ends failed, never claimed and silent
            why = (f"{err.status_code}: {err.detail}" if isinstance(err, HTTPException)
                   else f"422: {err}" if isinstance(err, RequestInvalid) else f"{type(err).__name__}: {err}")
            await self._off_loop(self.jobs.finish, {**state, "status": "failed", "error": excerpt(why, 500)})
            return
        state["total"] = len(plan.records)
        self.job_states[job["id"]] = state
        self.running_jobs[job["id"]] = asyncio.create_task(self._run_job(state, plan))

    async def _plan(self, body: EvaluateRequest) -> "Plan":
        """Every check before generation; what to generate and how."""
        served = await self._served(body.model)
        limits = self.cfg.serve
        max_tokens = body.sampling.max_tokens or self.cfg.eval.max_tokens
        if max_tokens > limits.max_tokens_limit:
            raise HTTPException(413, f"max_tokens {max_tokens} exceeds the limit of {limits.max_tokens_limit}")
        if body.items is not None and len(body.items) > limits.max_items:
            raise HTTPException(413, f"{len(body.items)} items exceed the limit of {limits.max_items} per request")
        records, group_by, quarantined = await self._records(body)
        few_shot = body.sampling.few_shot if body.sampling.few_shot is not None else served.few_shot
        self._check_few_shot(records, few_shot)
        records, quarantined = await self._fit_context(body, served, records, few_shot, max_tokens, quarantined)
        temperature = body.sampling.temperature if body.sampling.temperature is not None else self.cfg.eval.temperature
        params = {"n": 1, "temperature": temperature, "top_p": 1.0, "max_tokens": max_tokens, "seed": body.sampling.seed}
        return Plan(body.model, served.handle, records, group_by, quarantined if body.dataset is not None else None,
                    few_shot, params)

    async def _execute(self, plan: "Plan", progress: Callable[[int], Awaitable[None]] | None = None) -> EvaluateResponse:
        """Generate in chunks on the model's replicas, score here; `progress(items generated)`
        after each chunk."""
        size = self.cfg.eval.engine.batch_size
        handle = plan.handle
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

    async def _served(self, model: str) -> Served:
        """A configured model by name, else a checkpoint folder under the checkpoint root (served
        on demand); 404 for anything else, and for any path that leaves the root."""
        if model in self.models:
            return Served(model, self.models[model], self.descriptions[model]["few_shot"], self.tokenizers.get(model))
        root = self.cfg.serve.checkpoint_root
        path = None
        if self.checkpoints is not None and not any(p.startswith(".") and p not in (".", "..") for p in Path(model).parts):
            path = inside_location(root, model.strip("/")) if is_uri(root) else inside(Path(root), model)
        found = path is not None and await self._off_loop(lambda: (path / "config.json").is_file())
        if not found:
            also = " or a checkpoint folder under the checkpoint root" if self.checkpoints is not None else ""
            raise HTTPException(404, f"unknown model {excerpt(model, 200)!r}: give a served name{also}; served: "
                                     f"{sorted(self.models)}")
        model_id = str(path)[len(str(location(root))):].strip("/") if is_uri(root) else path.relative_to(
            Path(root).resolve()).as_posix()
        try:
            tokenizer = await self._off_loop(checkpoint_tokenizer, str(path))
        except Exception as err:  # noqa: BLE001 - a folder that is not a loadable model
            raise HTTPException(404, f"{excerpt(model, 200)!r} is not a loadable checkpoint: "
                                     f"{excerpt(f'{type(err).__name__}: {err}', 200)}") from None
        return Served(model_id, self.checkpoints.options(multiplexed_model_id=model_id), 0, tokenizer)

    def _check_few_shot(self, records: list[dict[str, Any]], few_shot: int) -> None:
        for task in sorted({r["task"] for r in records}):
            try:
                exemplars_for(task, few_shot, self.cfg.prompt.exemplars_path)
            except ValueError as err:
                raise RequestInvalid([issue(["body", "sampling", "few_shot"], f"task {task}: {err}",
                                            value=str(few_shot))]) from None

    async def _fit_context(self, body: EvaluateRequest, served: Served, records: list[dict[str, Any]], few_shot: int,
                           max_tokens: int, quarantined: list[dict[str, Any]]
                           ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Items whose prompt leaves no room for max_tokens are a 422 naming them; dataset rows are
        quarantined (reported in the answer), as the offline evaluator does."""
        tokenizer = served.tokenizer
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
                "max_dataset_bytes", "load_timeout_s", "allow_hub", "jobs_folder", "max_concurrent_jobs", "on_demand",
                "max_models_per_replica", "job_heartbeat_s", "job_attempts")


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
    `serve.*` field (SERVE_FIELDS), api_ray_actor_options (the ingress replica's, e.g. a
    runtime_env with the token variable) and checkpoints_ray_actor_options (the on-demand
    checkpoints deployment's, e.g. {num_gpus: 1})."""
    args = dict(args)
    config = args.pop("config", None)
    cfg = with_overrides(load_config(REPO / config if config else None),
                         {f"serve.{k}": args.pop(k) for k in SERVE_FIELDS if k in args})
    models = args.pop("models", None) or []
    if not models and not cfg.serve.on_demand:
        raise ValueError("build_app needs a non-empty 'models' list of {name, path, base_model} (or serve.on_demand)")
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
    checkpoints = None
    if cfg.serve.on_demand:
        deployment = checkpoint_server(cfg.serve.max_models_per_replica)
        if args.get("checkpoints_ray_actor_options"):
            deployment = deployment.options(ray_actor_options=args.pop("checkpoints_ray_actor_options"))
        checkpoints = deployment.bind(remote_root or str(root), cfg.model_dump(mode="json"))
    ingress = EvaluateAPI
    if args.get("api_ray_actor_options"):
        ingress = EvaluateAPI.options(ray_actor_options={"num_cpus": 0.5, **args.pop("api_ray_actor_options")})
    return ingress.bind(handles, descriptions, cfg.model_dump(mode="json"), tokenizer_paths, checkpoints)
