"""The model deployments: `ModelServer` (one configured model, one engine in its replica) and the
on-demand `checkpoints` deployment (`checkpoint_server`: any model folder under the checkpoint root,
loaded on first use with Ray Serve model multiplexing, at most `serve.max_models_per_replica`
engines per replica, least recently used out). Both generate through `Generating`: evaluation
chunks that `@serve.batch` merges across concurrent requests into single engine calls (one call's
failure is that call's alone), and the raw prompts of the /v1 routes, whole or streamed.

One client never breaks another's generation:
- each on-demand engine runs in its own process (`engine_process.EngineProcess`, a Ray actor the
  replica owns): vLLM's process-global state is never shared, so loading or evicting one engine
  leaves the others generating;
- an engine with requests in flight is never evicted: a new checkpoint waits up to
  `serve.evict_wait_s` for the least recently used engine to be idle, else 503 with Retry-After;
  an engine Serve's multiplexer evicts ends its process only once its last request is answered;
- an engine whose step loop died (or whose process ended) is replaced on its next request; a
  configured model's replica whose engine died fails Serve's health check and is replaced;
- a folder that fails to load is a 404 "not a loadable checkpoint", remembered for
  `serve.load_failure_ttl_s` (no new load attempt, nothing evicted by the retries).

Serve pickles each deployment class where it is decorated: what its methods use is defined or
imported above it."""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable

from ray import serve

from advdistill.config import ExperimentConfig
from advdistill.generation.base import GenerationParams
from advdistill.generation.rows import PromptTooLong
from advdistill.serve.engine_process import EngineCalls, EngineProcess, EngineStartFailed, InProcess
from advdistill.serve.errors import NotFound, Unavailable, describe
from advdistill.serve.paths import under_root
from advdistill.serve.schemas import excerpt

# Graceful shutdown waits this long for requests in flight (Serve's default is 20 s): SIGINT to
# `serve run` ends it in seconds even while long requests are being served.
GRACEFUL_SHUTDOWN_S = 5.0
Engine = InProcess | EngineProcess


class Generating:
    """What a model replica does with its engine: `generate` (evaluation chunks, merged across
    concurrent requests by `@serve.batch`), `complete` and `stream` (raw prompts, the OpenAI
    routes). Subclasses say which engine serves a request, for as long as it is served (`_using`)."""

    cfg: ExperimentConfig

    def _using(self) -> Any:  # an async context manager giving the request's engine
        raise NotImplementedError

    async def generate(self, records: list[dict[str, Any]], params: dict[str, Any], few_shot: int) -> dict[str, Any]:
        """{"rows": generated rows} or {"error": why, "client": whether the request is at fault}."""
        return await self._batched((records, params, few_shot))

    async def complete(self, prompts: list[str | list[int]], params: dict[str, Any], seed: int | None
                       ) -> list[list[dict[str, Any]]]:
        """Each prompt's choices as {text, num_tokens, finish_reason, logprobs, prompt_logprobs} (the
        prompts as given: text or token ids; log-probs as `TokenLogprob`s where asked, else None)."""
        async with self._using() as engine:
            return await engine.complete(prompts, params, seed)

    async def stream(self, prompt: str | list[int], params: dict[str, Any], seed: int | None):
        """The prompt's choices as they are generated: {index, text, num_tokens, finish_reason}."""
        async with self._using() as engine:
            async for delta in engine.stream(prompt, params, seed):
                yield delta

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _batched(self, calls: list[tuple[list[dict[str, Any]], dict[str, Any], int]]) -> list[dict[str, Any]]:
        # One batch holds one model's calls (Serve splits batches by multiplexed model id).
        results: list[dict[str, Any]] = [{"rows": []} for _ in calls]
        # Calls with the same sampling run as one engine call.
        by_params: dict[str, list[int]] = {}
        for index, (_, params, few_shot) in enumerate(calls):
            by_params.setdefault(json.dumps([params, few_shot], sort_keys=True), []).append(index)
        async with self._using() as engine:
            for key, indices in by_params.items():
                params, few_shot = json.loads(key)
                seed = params.pop("seed", 0)
                try:
                    GenerationParams(**params)
                except (TypeError, ValueError) as err:
                    for i in indices:
                        results[i] = {"error": str(err), "client": True}
                    continue
                try:
                    rows = await engine.rows([r for i in indices for r in calls[i][0]], params, few_shot, seed)
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

    @staticmethod
    async def _alone(engine: Engine, records: list[dict[str, Any]], params: dict[str, Any], few_shot: int,
                     seed: int) -> dict[str, Any]:
        try:
            return {"rows": await engine.rows(records, params, few_shot, seed)}
        except (PromptTooLong, ValueError) as err:  # the request's fault (raised here or in the engine's process)
            return {"error": describe(err).partition(": ")[2], "client": True}
        except Exception as err:  # noqa: BLE001
            return {"error": describe(err), "client": False}


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=64,
                  graceful_shutdown_timeout_s=GRACEFUL_SHUTDOWN_S, graceful_shutdown_wait_loop_s=0.5)
class ModelServer(Generating):
    """One configured model, one engine in this replica's process."""

    def __init__(self, path: str, cfg: dict[str, Any]):
        self.cfg = ExperimentConfig.model_validate(cfg)
        self.engine = InProcess(EngineCalls(path, self.cfg))

    @asynccontextmanager
    async def _using(self) -> AsyncIterator[InProcess]:
        yield self.engine

    def check_health(self) -> None:
        """Serve's health check: a replica whose engine can no longer generate is replaced."""
        failure = self.engine.failure()
        if failure is not None:
            raise RuntimeError(f"the engine can no longer generate: {failure}")


class CheckpointSlot:
    """What Serve's multiplexer keeps for one checkpoint: its engine (replaced when it fails) and
    the requests using it. When the multiplexer evicts it, it awaits `__del__` — an instance
    attribute here, so garbage collection never calls it — which waits for the last request in
    flight before the engine's process ends."""

    def __init__(self, model_id: str, engine: EngineProcess, start: Callable[[], Any],
                 on_evict: Callable[[str], None]):
        self.model_id, self.engine, self._start, self._on_evict = model_id, engine, start, on_evict
        self.in_flight = 0
        self._replacing = asyncio.Lock()
        self.__del__ = self._evicted

    async def current(self) -> EngineProcess:
        """The engine, started again if it failed (its step loop died, its process ended)."""
        async with self._replacing:
            if self.engine is None or self.engine.failure() is not None:
                failed, self.engine = self.engine, None
                if failed is not None:
                    await failed.shutdown()
                try:
                    self.engine = await self._start()
                except NotFound:
                    raise Unavailable(f"the engine of {self.model_id!r} failed and could not be started again",
                                      retry_after=30) from None
            return self.engine

    async def _evicted(self) -> None:
        self._on_evict(self.model_id)
        while self.in_flight:  # never end an engine while it answers a request
            await asyncio.sleep(0.05)
        if self.engine is not None:
            await self.engine.shutdown()


async def room_for_one(loaded_ids: list[str], slots: dict[str, CheckpointSlot], capacity: int, wait_s: float) -> None:
    """Return once a new checkpoint may load: the cache has room, or the engine it would evict
    (the least recently used, `loaded_ids[0]`) has no request in flight. Unavailable (503 with
    Retry-After) after `wait_s`: a busy engine is never evicted."""
    deadline = time.monotonic() + wait_s
    while len(loaded_ids) >= capacity:
        oldest = slots.get(loaded_ids[0])
        if oldest is None or oldest.in_flight == 0:
            return
        if time.monotonic() >= deadline:
            raise Unavailable(f"all {len(loaded_ids)} checkpoint engines of this replica are answering requests "
                              f"(serve.max_models_per_replica {capacity}); retry shortly",
                              retry_after=max(1, round(wait_s)))
        await asyncio.sleep(0.05)


def checkpoint_server(max_models_per_replica: int):
    """The deployment that serves any checkpoint folder under the checkpoint root on demand
    (Ray Serve model multiplexing: the model id is the folder, relative to the root; each replica
    keeps at most `max_models_per_replica` engines, least recently used out). The replica itself
    only routes: each engine is an actor with `engine_options` (CPUs, a GPU share)."""

    @serve.deployment(name="checkpoints", ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=64,
                      graceful_shutdown_timeout_s=GRACEFUL_SHUTDOWN_S, graceful_shutdown_wait_loop_s=0.5)
    class CheckpointServer(Generating):
        def __init__(self, root: str, cfg: dict[str, Any], engine_options: dict[str, Any] | None = None):
            self.root, self.cfg_json = root, cfg
            self.cfg = ExperimentConfig.model_validate(cfg)
            self.engine_options = engine_options or {"num_cpus": 1}
            self.loaded_ids: list[str] = []  # this replica's engines, oldest use first (Serve's LRU order)
            self.slots: dict[str, CheckpointSlot] = {}
            self.failures: dict[str, tuple[float, str]] = {}  # model id -> (remembered until, why)

        @serve.multiplexed(max_num_models_per_replica=max_models_per_replica)
        async def load(self, model_id: str) -> CheckpointSlot:
            slot = CheckpointSlot(model_id, await self._start(model_id), lambda: self._start(model_id), self._forget)
            self.slots[model_id] = slot
            self.loaded_ids.append(model_id)
            return slot

        async def _start(self, model_id: str) -> EngineProcess:
            path = under_root(self.root, model_id)
            if path is None:  # the ingress checked it; a direct handle call may not have
                raise NotFound(f"{excerpt(model_id, 200)!r} is not inside the checkpoint root")
            try:
                return await EngineProcess.start(str(path), self.cfg_json, self.engine_options)
            except EngineStartFailed as err:
                why = f"{excerpt(model_id, 200)!r} is not a loadable checkpoint: {err}"
                self.failures[model_id] = (time.monotonic() + self.cfg.serve.load_failure_ttl_s, why)
                raise NotFound(why) from None

        def _forget(self, model_id: str) -> None:
            self.slots.pop(model_id, None)
            if model_id in self.loaded_ids:
                self.loaded_ids.remove(model_id)

        @asynccontextmanager
        async def _using(self) -> AsyncIterator[EngineProcess]:
            model_id = serve.get_multiplexed_model_id()
            failed = self.failures.get(model_id)
            if failed is not None and failed[0] > time.monotonic():
                raise NotFound(failed[1])
            if model_id not in self.slots:
                await room_for_one(self.loaded_ids, self.slots, max_models_per_replica, self.cfg.serve.evict_wait_s)
            slot = await self.load(model_id)
            slot.in_flight += 1  # no await since `load` returned: the slot cannot be evicted unseen
            try:
                if model_id in self.loaded_ids:  # most recently used last, as Serve's LRU orders them
                    self.loaded_ids.remove(model_id)
                    self.loaded_ids.append(model_id)
                yield await slot.current()
            finally:
                slot.in_flight -= 1

        async def loaded(self) -> list[str]:
            return list(self.loaded_ids)

        async def engines(self) -> dict[str, int]:
            """Each loaded checkpoint's engine process id (tests: evicted engines end)."""
            return {m: s.engine.pid for m, s in self.slots.items() if s.engine is not None}

    return CheckpointServer
