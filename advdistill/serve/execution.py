"""Running a plan on the model replicas: an evaluation in chunks (scored here, with the offline
evaluator's own functions, so both report the same numbers) and a /v1 completion. A call whose
replica dies under it (killed, OOM, a lost node) is retried on the replica Serve starts instead
(`on_live_replica`, the one retry loop); generation is deterministic per item, so a retry gives
the same rows."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, TypeVar

from advdistill.evaluation.evaluator import score_predictions
from advdistill.evaluation.metrics import summarize_predictions
from advdistill.serve.catalog import OffLoop, Served
from advdistill.serve.errors import ApiError, Invalid, Unavailable, describe
from advdistill.serve.planning import Plan
from advdistill.serve.schemas import MAX_ERRORS_SHOWN, EvaluateResponse, excerpt, issue

REPLICA_ATTEMPTS = 3  # tries of one call when its model replica dies under it
T = TypeVar("T")
Progress = Callable[[int], Awaitable[None]]


async def on_live_replica(call: Callable[[], Awaitable[T]], what: str = "") -> T:
    """`call()` (a deployment handle call), again on the next replica when the one it reached
    died; Unavailable after REPLICA_ATTEMPTS tries. `what` ends the message ("on one chunk")."""
    from ray.exceptions import ActorUnavailableError, RayActorError  # Ray only once a replica is called

    from ray.exceptions import RayTaskError

    for attempt in range(1, REPLICA_ATTEMPTS + 1):
        try:
            return await call()
        except (RayActorError, ActorUnavailableError):
            # Serve starts another replica and the handle routes the next try to it.
            if attempt == REPLICA_ATTEMPTS:
                raise Unavailable(f"the model's replicas failed {attempt} times{what}") from None
        except RayTaskError as err:
            if isinstance(err.cause, ApiError):  # the replica's own answer (a checkpoint that does not load,
                raise err.cause from None        # engines all busy): as it raised it
            raise
    raise AssertionError("unreachable")


async def evaluate(plan: Plan, batch_size: int, off_loop: OffLoop, progress: Progress | None = None
                   ) -> EvaluateResponse:
    """Generate in chunks of `batch_size` on the model's replicas, score here; `progress(items
    generated)` after each chunk."""
    done = 0

    async def chunk(records: list[dict[str, Any]]) -> dict[str, Any]:
        nonlocal done
        result = await on_live_replica(lambda: plan.handle.generate.remote(records, plan.params, plan.few_shot),
                                       " on one chunk")
        done += len(records)
        if progress is not None:
            await progress(done)
        return result

    chunks = await asyncio.gather(*[chunk(plan.records[i : i + batch_size])
                                    for i in range(0, len(plan.records), batch_size)])
    failed = [c for c in chunks if "error" in c]
    if failed:
        if all(c["client"] for c in failed):
            raise Invalid([issue(["body"], failed[0]["error"])])
        raise Unavailable(f"generation failed: {excerpt(failed[0]['error'], 300)}", retry_after=10)
    generated = [row for chunk in chunks for row in chunk["rows"]]
    predictions = await off_loop(score_predictions, generated)
    metrics = summarize_predictions(predictions, group_by=plan.group_by)
    answer = {"model": plan.model, "few_shot": plan.few_shot, "metrics": metrics, "results": predictions}
    if plan.quarantined is not None:
        answer["quarantined"] = plan.quarantined[:MAX_ERRORS_SHOWN]
        answer["quarantined_count"] = len(plan.quarantined)
    return EvaluateResponse.model_validate(answer)


async def complete(served: Served, prompts: list[str], params: dict[str, Any],
                   seed: int | None) -> list[list[dict[str, Any]]]:
    """Each prompt's choices as {text, num_tokens, finish_reason}."""
    try:
        return await on_live_replica(lambda: served.handle.complete.remote(prompts, params, seed))
    except ApiError:
        raise
    except ValueError as err:  # the engine refused the request (vLLM's own validation)
        raise Invalid([issue(["body"], describe(err).partition(": ")[2])]) from None
    except Exception as err:  # noqa: BLE001 - an engine failure is the server's, never a bare 500
        # describe: the engine's own error in one line, never Ray's traceback, PID or address
        raise Unavailable(f"generation failed: {describe(err)}", retry_after=10) from None
