"""What a model replica asks of an engine, and where the engine runs.

- `EngineCalls`: one engine and the three calls a replica makes of it (evaluation rows, /v1
  completions, /v1 streams), synchronous.
- `InProcess`: an `EngineCalls` in the replica's own process (a configured model's replica holds
  one engine for its whole life).
- `EngineProcess`: an `EngineCalls` in its own Ray actor, owned by the replica (the on-demand
  checkpoints). vLLM keeps process-global state (its parallel groups): two engines in one process
  break each other when one loads or is destroyed while the other generates ('pipeline model
  parallel group is not initialized', and the survivor's step loop stays dead). One engine per
  process makes loading, evicting and a dead engine each one process's business: eviction kills
  the actor, so its memory (a GPU share included) is back the moment it ends.

Both give the same async interface (`rows`, `complete`, `stream`, `failure`, `shutdown`); an
engine whose step loop died or whose process ended reports it in `failure`, and its owner drops it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator, Iterator

from advdistill.config import ExperimentConfig
from advdistill.generation.base import GenerationParams
from advdistill.generation.factory import make_engine
from advdistill.generation.rows import generate_rows
from advdistill.generation.step_loop import EngineLoopError
from advdistill.serve.errors import describe

ENGINE_CALLS_AT_ONCE = 64  # calls one engine process serves at once (the step loop merges them)


def fields_of(value: Any) -> dict[str, Any]:
    """A dataclass's fields as a dict, one level deep (log-probs stay `TokenLogprob`s)."""
    return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}


class EngineCalls:
    """An engine loaded from `path` with the config's `eval.engine`, and what a replica calls."""

    def __init__(self, path: str, cfg: ExperimentConfig):
        self.cfg = cfg
        self.engine = make_engine(path, cfg.eval.engine)

    def rows(self, records: list[dict[str, Any]], params: dict[str, Any], few_shot: int, seed: int
             ) -> list[dict[str, Any]]:
        """Evaluation rows (`generation.rows.generate_rows`): prompts rendered here, with the
        engine's own tokenizer."""
        return generate_rows(self.engine, records, GenerationParams(**params), prompt=self.cfg.prompt,
                             few_shot=few_shot, seed=seed, max_model_len=self.cfg.eval.engine.max_model_len)

    def complete(self, prompts: list[Any], params: dict[str, Any], seed: int | None) -> list[list[dict[str, Any]]]:
        """Each prompt's choices as {text, num_tokens, finish_reason, logprobs, prompt_logprobs} (the
        prompts as given: text or token ids; log-probs as `TokenLogprob`s where asked, else None)."""
        outputs = self.engine.generate(prompts, GenerationParams(**params),
                                       None if seed is None else [seed] * len(prompts))
        return [[fields_of(c) for c in choices] for choices in outputs]

    def stream(self, prompt: Any, params: dict[str, Any], seed: int | None) -> Iterator[dict[str, Any]]:
        """The prompt's choices as they are generated: {index, text, num_tokens, finish_reason}."""
        deltas = self.engine.stream(prompt, GenerationParams(**params), seed)
        try:
            for delta in deltas:
                yield fields_of(delta)
        finally:
            deltas.close()  # stopped early (a client gone): the engine drops the request

    def failure(self) -> str | None:
        """Why this engine can no longer generate (its vLLM step loop stopped), or None."""
        loop = getattr(self.engine, "step_loop", None)
        error = getattr(loop, "failure", None) if loop is not None else None
        return None if error is None else describe(error)

    def close(self) -> None:
        self.engine.close()


async def _iterate(iterator: Iterator[Any], run: Any) -> AsyncIterator[Any]:
    """An iterator whose `next` blocks, stepped in a thread (`run(fn, *args)` awaits one call)."""
    end = object()
    try:
        while (item := await run(next, iterator, end)) is not end:
            yield item
    finally:
        try:
            iterator.close()
        except ValueError:  # still running in its thread: the request ends at its max_tokens
            pass


class InProcess:
    """An engine in this process; blocking calls run in threads, the event loop stays free."""

    def __init__(self, calls: EngineCalls):
        self.calls = calls

    async def rows(self, records: list[dict[str, Any]], params: dict[str, Any], few_shot: int, seed: int) -> list:
        return await asyncio.to_thread(self.calls.rows, records, params, few_shot, seed)

    async def complete(self, prompts: list[Any], params: dict[str, Any], seed: int | None) -> list:
        return await asyncio.to_thread(self.calls.complete, prompts, params, seed)

    async def stream(self, prompt: Any, params: dict[str, Any], seed: int | None) -> AsyncIterator[dict[str, Any]]:
        async for delta in _iterate(self.calls.stream(prompt, params, seed), asyncio.to_thread):
            yield delta

    def failure(self) -> str | None:
        return self.calls.failure()

    async def shutdown(self) -> None:
        await asyncio.to_thread(self.calls.close)


class EngineHost:
    """The Ray actor of one on-demand engine (`EngineProcess`): an async actor whose engine calls
    run in its own threads, so calls and streams from the replica run side by side."""

    def __init__(self, path: str, cfg: dict[str, Any]):
        self.calls = EngineCalls(path, ExperimentConfig.model_validate(cfg))
        self.pool = ThreadPoolExecutor(ENGINE_CALLS_AT_ONCE, thread_name_prefix="engine")

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def pid(self) -> int:
        return os.getpid()

    async def rows(self, records: list[dict[str, Any]], params: dict[str, Any], few_shot: int, seed: int) -> list:
        return await self._run(self.calls.rows, records, params, few_shot, seed)

    async def complete(self, prompts: list[Any], params: dict[str, Any], seed: int | None) -> list:
        return await self._run(self.calls.complete, prompts, params, seed)

    async def stream(self, prompt: Any, params: dict[str, Any], seed: int | None) -> AsyncIterator[dict[str, Any]]:
        async for delta in _iterate(self.calls.stream(prompt, params, seed), self._run):
            yield delta

    def failure(self) -> str | None:
        return self.calls.failure()


class EngineStartFailed(RuntimeError):
    """The engine's process could not load the folder; the message says why, in one line."""


class EngineProcess:
    """An `EngineCalls` in its own actor (`EngineHost`), owned by the replica that started it: it
    ends with its replica, or at `shutdown`. `options` are the actor's (CPUs, a GPU share, custom
    resources)."""

    def __init__(self, actor: Any, pid: int):
        self.actor, self.pid = actor, pid
        self.failed: str | None = None

    @classmethod
    async def start(cls, path: str, cfg: dict[str, Any], options: dict[str, Any]) -> "EngineProcess":
        import ray

        actor = ray.remote(EngineHost).options(max_concurrency=ENGINE_CALLS_AT_ONCE, **options).remote(path, cfg)
        try:
            return cls(actor, await actor.pid.remote())
        except Exception as err:  # noqa: BLE001 - the folder did not load: the actor is gone, say why
            ray.kill(actor, no_restart=True)
            raise EngineStartFailed(describe(err)) from None

    async def _call(self, call: Any) -> Any:
        from ray.exceptions import RayActorError

        try:
            return await call
        except RayActorError as err:  # the process ended (killed, out of memory)
            self.failed = describe(err)
            raise
        except EngineLoopError as err:  # its step loop stopped: every later call would fail too
            self.failed = describe(err)
            raise

    async def rows(self, records: list[dict[str, Any]], params: dict[str, Any], few_shot: int, seed: int) -> list:
        return await self._call(self.actor.rows.remote(records, params, few_shot, seed))

    async def complete(self, prompts: list[Any], params: dict[str, Any], seed: int | None) -> list:
        return await self._call(self.actor.complete.remote(prompts, params, seed))

    async def stream(self, prompt: Any, params: dict[str, Any], seed: int | None) -> AsyncIterator[dict[str, Any]]:
        import ray

        deltas = self.actor.stream.options(num_returns="streaming").remote(prompt, params, seed)
        finished = False
        try:
            async for ref in deltas:
                yield await self._call(ref)
            finished = True
        finally:
            if not finished:  # the client went away: the engine drops the request
                ray.cancel(deltas)

    def failure(self) -> str | None:
        return self.failed

    async def shutdown(self) -> None:
        """End the engine's process (its memory, GPU share included, is back when it has)."""
        import ray

        ray.kill(self.actor, no_restart=True)
