"""The model deployments: `ModelServer` (one configured model, one engine) and the on-demand
`checkpoints` deployment (`checkpoint_server`: any model folder under the checkpoint root, loaded on
first use with Ray Serve model multiplexing, at most `serve.max_models_per_replica` engines per
replica, least recently used out). Both generate through `Generating`: evaluation chunks that
`@serve.batch` merges across concurrent requests into single engine calls (one call's failure is
that call's alone), and the raw prompts of the /v1 routes, whole or streamed.

Serve pickles each deployment class where it is decorated: what its methods use is defined or
imported above it."""

from __future__ import annotations

import asyncio
import json
from typing import Any, Callable

from ray import serve

from advdistill.config import ExperimentConfig
from advdistill.generation.base import GenerationParams
from advdistill.generation.factory import make_engine
from advdistill.generation.rows import PromptTooLong, generate_rows
from advdistill.serve.paths import under_root

# Graceful shutdown waits this long for requests in flight (Serve's default is 20 s): SIGINT to
# `serve run` ends it in seconds even while long requests are being served.
GRACEFUL_SHUTDOWN_S = 5.0


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

    async def complete(self, prompts: list[str | list[int]], params: dict[str, Any], seed: int | None
                       ) -> list[list[dict[str, Any]]]:
        """Each prompt's choices as {text, num_tokens, finish_reason, logprobs, prompt_logprobs} (the
        prompts as given: text or token ids; log-probs as `TokenLogprob`s where asked, else None)."""
        async with self._using() as engine:
            return await engine.complete(prompts, params, seed)


    async def stream(self, prompt: str | list[int], params: dict[str, Any], seed: int | None):
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
            path = under_root(self.root, model_id)
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
