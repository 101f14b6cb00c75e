"""The generation layer on Ray Data, shared by curation and evaluation: an actor pool that holds
one engine per actor and runs `generate_rows` on each batch of records, then an actor pool that
scores the generated rows. Placement: one generation actor per `tensor_parallel_size` GPUs, the
pool's bounds decided by the driver before anything starts (`pool.actor_pool`: the stated
`resources.max_actors`, required on an autoscaling cluster); as many scoring actors at most.
Each generation actor reports its lease to the stage's `ledger.Ledger` (accelerator-seconds
summed over the actors' lifetimes) and exits when its engine stalls (`step_loop.EngineStalled`),
so that Ray restarts it and retries its batches (fault injection for tests, not a config field:
`ADVDISTILL_STALL_AT_STEP=N` in the driver's environment hangs step N of each actor's engine
once; a restarted actor runs without it). A vLLM actor runs `engine.concurrent_batches` calls at
once (threads; `engine_concurrency`): each call's prompts join the running engine, so it never
idles in a batch's tail.

Batches travel as Arrow tables of the `advdistill.schema` tables (`to_arrow`/`from_arrow`). An
engine that meters what it is asked (the endpoint teacher's `generate_metered`) adds its
per-prompt usage to each row (`USAGE` columns: requests, prompt and completion tokens), which
curation keeps in its groups (`schema.CuratedGroup`) and sums in its summary.

Before anything is generated, the driver checks every prompt against the engine's context with
the model's tokenizer (`check_context`): a prompt that leaves no room for `max_tokens` is a
quarantined row, never a failed run.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
import warnings
from functools import lru_cache
from typing import Any, Callable, Sequence

import psutil
import pyarrow as pa

from advdistill.config import EngineConfig, PromptConfig
from advdistill.generation.base import GenerationParams, vllm_available
from advdistill.generation.factory import make_engine
from advdistill.generation.ledger import Ledger, report_lease
from advdistill.generation.pool import PoolPlan
from advdistill.generation.rows import PromptTooLong, fit_context, generate_rows, prompt_seed
from advdistill.generation.step_loop import EngineStalled
from advdistill.schema import GeneratedGroup, Record, arrow_schema, columns, from_arrow, to_arrow
from advdistill.scoring.math_verify_pool import warm_up
from advdistill.storage import local_model


def use_assigned_cpus() -> int:
    """Ray starts workers with OMP_NUM_THREADS=1 (= one thread for torch), whatever CPUs the
    actor reserved; an engine on CPU should compute with all of them (measured here: 1 of 2 cores
    made curation 0.6x of a bare vLLM loop). Returns the thread count."""
    import ray
    import torch

    threads = max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
    if not torch.cuda.is_available():
        torch.set_num_threads(threads)
    return threads


def _passengers(batch: pa.Table) -> list[str]:
    """Columns of a batch that are not the record's (an evaluation's split label): kept as they are."""
    return [name for name in batch.column_names if name not in columns(Record)]


USAGE = ("requests", "prompt_tokens", "completion_tokens")  # per-row counts of a metered (endpoint) engine


class _Metered:
    """An engine as `generate_rows` sees it, keeping the per-prompt usage of its one `generate`
    call (one per actor call, so concurrent calls never mix their figures)."""

    def __init__(self, engine: Any):
        self.engine, self.tokenizer, self.usage = engine, engine.tokenizer, []

    def generate(self, prompts: Sequence[str], params: GenerationParams, seeds: Sequence[int] | None = None):
        outputs, self.usage = self.engine.generate_metered(prompts, params, seeds)
        return outputs


def worker_started(now: float | None = None, at_most_s: float = 120.0) -> float:
    """When this actor began holding its resources, as near as a process can tell: Ray grants an
    actor its GPUs with its worker process, so the process's start (its imports, Ray Data's wrapper)
    counts — measured on the fake autoscaler, starting the lease at the constructor left 12% of the
    held GPU-seconds out over six leases. A worker Ray kept idle before leasing it to this actor
    would count its idle time too: no more than `at_most_s` before now is taken."""
    now = time.time() if now is None else now
    return max(psutil.Process().create_time(), now - at_most_s)


class GenerationActor:
    """Record batch in, the same rows out as `schema.GeneratedGroup` (prompt, responses,
    token_lengths, finish_reasons), plus the `USAGE` columns where the engine meters its work."""

    def __init__(self, model: str, engine: EngineConfig, params: GenerationParams, prompt: PromptConfig,
                 few_shot: int, seed: int, ledger: Any = None, stall_at_step: int | None = None):
        import ray

        context = ray.get_runtime_context()
        if ledger is not None:  # first: loading the engine holds the GPUs too
            report_lease(ledger, context.get_assigned_resources().get("GPU", 0), start=worker_started())
        use_assigned_cpus()
        if stall_at_step is not None and context.was_current_actor_reconstructed:
            stall_at_step = None  # an injected stall hangs an actor once, not its restarts
        # per_batch: the engine's own generator, seeded apart for every actor (the same seed in
        # each would draw the same random numbers for different prompts).
        engine_seed = seed if engine.seeding == "per_prompt" else prompt_seed(seed, f"actor/{uuid.uuid4().hex}")
        self.engine = make_engine(model, engine, seed=engine_seed, stall_at_step=stall_at_step)
        self.params, self.prompt_cfg, self.few_shot, self.seed = params, prompt, few_shot, seed
        self.max_model_len, self.seeding = engine.max_model_len, engine.seeding

    def __call__(self, batch: pa.Table) -> pa.Table:
        metered = hasattr(self.engine, "generate_metered")
        engine = _Metered(self.engine) if metered else self.engine
        try:
            rows = generate_rows(engine, from_arrow(batch), self.params, prompt=self.prompt_cfg,
                                 few_shot=self.few_shot, seed=self.seed, max_model_len=self.max_model_len,
                                 seeding=self.seeding)
        except EngineStalled as err:
            # A hung engine does not come back: end this process, so that Ray restarts the actor
            # (FAULT_TOLERANCE) and runs its batches again on a fresh engine. Raising instead would
            # fail the dataset, and a thread stuck in the engine would hold the GPU forever.
            print(f"[GenerationActor] {err}; exiting so that Ray restarts this actor and retries its batches",
                  file=sys.stderr, flush=True)
            os._exit(1)
        if not metered:
            return to_arrow(rows, arrow_schema(GeneratedGroup), extra=_passengers(batch))
        rows = [{**row, **usage} for row, usage in zip(rows, engine.usage, strict=True)]
        return to_arrow(rows, arrow_schema(GeneratedGroup), extra=[*_passengers(batch), *USAGE])


class ScoringActor:
    """Generated rows in, `score_row(row)` of each out, as a table of `schema`. Constructing it
    starts this process's math-verify workers, so the first LaTeX answer does not wait for them."""

    def __init__(self, score_row: Callable[[dict[str, Any]], dict[str, Any]], schema: pa.Schema,
                 extra: Sequence[str] = ()):
        warm_up()
        self.score_row, self.schema, self.extra = score_row, schema, list(extra)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return to_arrow([self.score_row(row) for row in from_arrow(batch)], self.schema, extra=self.extra)


STALL_AT_STEP_ENV = "ADVDISTILL_STALL_AT_STEP"


def injected_stall_step() -> int | None:
    """The step `ADVDISTILL_STALL_AT_STEP` names in the driver's environment (tests), or None."""
    value = os.environ.get(STALL_AT_STEP_ENV, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{STALL_AT_STEP_ENV} must be a step number >= 1, got {value!r}")
    return int(value)


# A dead generation actor is restarted a bounded number of times (Ray Data's default is unbounded,
# which turns a deterministic crash, e.g. OOM at load, into a hang). Its batches are retried until
# it is restarted or dead for good: while a lost node is not yet declared dead (GCS health checks,
# ~15 s), every call to its actor fails at once as "temporarily unavailable", which burned a
# bounded retry count in under a second (tests/test_node_loss.py). Unbounded retries stay bounded
# by the restarts: a dead actor fails its tasks.
FAULT_TOLERANCE = {"max_restarts": 3, "max_task_retries": -1}


def engine_concurrency(engine: EngineConfig) -> dict[str, Any]:
    """Calls one generation actor runs at once. vLLM engines take `engine.concurrent_batches`
    (their `StepLoop` admits each call's prompts into the running engine), as do endpoint engines
    (their requests share one bounded pool); the transformers engine one, as its sampling seeds
    torch's global generator."""
    kind = engine.backend if engine.backend != "auto" else ("vllm" if vllm_available() else "transformers")
    if kind not in ("vllm", "openai") or engine.concurrent_batches == 1:
        return {}
    return {"max_concurrent_calls_per_actor": engine.concurrent_batches, "enable_true_multi_threading": True}


@lru_cache(maxsize=4)
def model_tokenizer(model: str) -> Any:
    """The tokenizer an engine of `model` uses (vLLM and transformers both load the model's own)."""
    from transformers import AutoTokenizer  # transformers: loaded by the actors that tokenize, not on import

    return AutoTokenizer.from_pretrained(local_model(model, weights=False))


def check_context(records: Sequence[dict[str, Any]], *, model: str, engine: EngineConfig, params: GenerationParams,
                  prompt: PromptConfig, few_shot: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """`records` split into those whose prompt leaves `params.max_tokens` in the engine's context
    and quarantine rows for the others (`rows.fit_context`, with the model's tokenizer)."""
    return fit_context(records, model_tokenizer(model), max_model_len=engine.max_model_len,
                       max_tokens=params.max_tokens, prompt=prompt, few_shot=few_shot)


def generate_and_score(records: Sequence[dict[str, Any]], *, model: str, engine: EngineConfig, params: GenerationParams,
                       prompt: PromptConfig, few_shot: int, seed: int, pool: PoolPlan,
                       score_row: Callable[[dict[str, Any]], dict[str, Any]], schema: pa.Schema,
                       extra: Sequence[str] = (), quarantine: list[dict[str, Any]] | None = None,
                       ledger: Ledger | None = None):
    """A Ray dataset of `records` (`schema.Record`s, plus their `extra` columns) generated on an
    autoscaling pool of `GenerationActor`s and scored row by row by `score_row` on a pool of
    `ScoringActor`s (0.5 CPU each, no more of them than generation actors), as tables of `schema`
    plus the `extra` columns. Consume it as a stream: batches arrive as they are scored.

    Records whose prompt does not fit the engine's context are left out and appended to
    `quarantine` (`check_context`); without a `quarantine` list they raise `PromptTooLong`.
    `pool` (`pool.actor_pool`) sizes the generation actors (`PoolPlan.sizes`: on an autoscaling
    cluster, all of them asked for at once); with a `ledger`, each reports its lease there (read
    it once the dataset is consumed)."""
    import ray

    records, rejected = check_context(records, model=model, engine=engine, params=params, prompt=prompt,
                                      few_shot=few_shot)
    if rejected:
        if quarantine is None:
            raise PromptTooLong(f"{len(rejected)} prompt(s) do not fit the context, e.g. {rejected[0]['id']}: "
                                f"{rejected[0]['reason']}")
        quarantine.extend(rejected)
    table = to_arrow(records, arrow_schema(Record), extra=extra)
    # One block per engine batch: blocks are what Ray Data hands out, so the work spreads over the
    # actors and the results stream back a batch at a time (one block would come back at the end).
    blocks = [table.slice(start, engine.batch_size) for start in range(0, len(table), engine.batch_size)] or [table]
    ds = ray.data.from_arrow(blocks)
    with warnings.catch_warnings():
        # Ray 2.60 has no named parameter for actor restarts yet; its own docs point to these
        # kwargs (map_batches(..., max_restarts=...)), which it flags as deprecated.
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
        generated = ds.map_batches(
            GenerationActor,
            fn_constructor_kwargs={"model": model, "engine": engine, "params": params, "prompt": prompt,
                                   "few_shot": few_shot, "seed": seed,
                                   "ledger": ledger.handle if ledger is not None else None,
                                   "stall_at_step": injected_stall_step()},
            batch_size=engine.batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(**pool.sizes(len(blocks)), **engine_concurrency(engine)),
            **pool.remote_args,
            **FAULT_TOLERANCE,
        )
    return generated.map_batches(
        ScoringActor,
        fn_constructor_kwargs={"score_row": score_row, "schema": schema, "extra": list(extra)},
        batch_size=engine.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=pool.max_actors),
        num_cpus=0.5,
    )
