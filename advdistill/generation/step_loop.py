"""vLLM's engine fed continuously: one thread owns the engine's step loop, callers from any thread
hand in prompts and wait for their outputs.

`LLM.generate(batch)` adds a batch and steps until the batch's last sequence ends: the engine runs
the tail of every batch (a few long samples still decoding) nearly empty while the next batch
waits in the caller. Here the generation actor runs several calls at once (Ray Data's
`max_concurrent_calls_per_actor`); each call's prompts join the running engine at the next step,
so new sequences start the moment others finish, and each call returns as soon as its own
requests are done. The number in flight is bounded by the callers: at most that many batches.

vLLM's `LLMEngine` is not thread-safe, so only the loop thread touches it (`LLM.enqueue`, which
renders prompts and adds requests exactly as `LLM.generate` does, and `LLMEngine.step`). Sampling
is seeded per request, so a prompt's samples do not depend on which batch it ran beside.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Sequence


class EngineLoopError(RuntimeError):
    """The engine failed inside its step loop; every call then waiting got this error."""


class _Call:
    """One caller's requests: where each output goes, and the event the caller waits on."""

    def __init__(self, size: int):
        self.outputs: list[Any] = [None] * size
        self.remaining = size
        self.error: BaseException | None = None
        self.done = threading.Event()

    def deliver(self, position: int, output: Any) -> None:
        self.outputs[position] = output
        self.remaining -= 1
        if self.remaining == 0:
            self.done.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.done.set()


_STOP = object()


def external_id(request_id: str) -> str:
    """The id a request's outputs carry. `LLM.enqueue` returns the engine's internal ids, which
    are the external ones (`LLM`'s counter: digits) plus "-" and 8 random characters."""
    return request_id.rsplit("-", 1)[0]


class StepLoop:
    """Runs `llm`'s step loop in a daemon thread for as long as the engine lives."""

    def __init__(self, llm: Any):
        self._llm = llm
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._waiting: dict[str, tuple[_Call, int]] = {}
        self._broken: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="vllm-step-loop", daemon=True)
        self._thread.start()

    def generate(self, prompts: Sequence[str], sampling: Sequence[Any]) -> list[Any]:
        """The finished `RequestOutput` of each prompt, in order (blocks until all are done)."""
        if self._broken is not None:
            raise EngineLoopError(f"the engine's step loop stopped: {self._broken!r}") from self._broken
        if not prompts:
            return []
        call = _Call(len(prompts))
        self._inbox.put((list(prompts), list(sampling), call))
        while not call.done.wait(timeout=1.0):
            if not self._thread.is_alive():  # the loop ended after this call was queued
                call.fail(EngineLoopError(f"the engine's step loop stopped: {self._broken!r}"))
        if call.error is not None:
            raise call.error
        return call.outputs

    def close(self) -> None:
        self._inbox.put(_STOP)
        self._thread.join(timeout=30)

    def _admit(self, item: tuple[list[str], list[Any], _Call]) -> None:
        prompts, sampling, call = item
        try:
            ids = self._llm.enqueue(prompts, sampling, use_tqdm=False)
        except Exception as err:  # a bad request fails its own call only (enqueue adds all or none)
            call.fail(err)
            return
        for position, request_id in enumerate(ids):
            self._waiting[external_id(request_id)] = (call, position)

    def _run(self) -> None:
        engine = self._llm.llm_engine
        while True:
            # Idle: sleep until a call arrives. Busy: take whatever arrived since the last step.
            items = [self._inbox.get()] if not engine.has_unfinished_requests() else []
            while True:
                try:
                    items.append(self._inbox.get_nowait())
                except queue.Empty:
                    break
            for item in items:
                if item is _STOP:
                    self._broken = EngineLoopError("the engine was closed")
                    self._fail_all(self._broken)
                    return
                self._admit(item)
            if not engine.has_unfinished_requests():
                continue
            try:
                outputs = engine.step()
            except BaseException as err:  # the engine is unusable: fail every waiting call, refuse new ones
                self._broken = err
                self._fail_all(EngineLoopError(f"the engine's step failed: {err!r}"))
                return
            for output in outputs:
                if output.finished and output.request_id in self._waiting:
                    call, position = self._waiting.pop(output.request_id)
                    call.deliver(position, output)

    def _fail_all(self, error: BaseException) -> None:
        calls = {id(call): call for call, _ in self._waiting.values()}
        self._waiting.clear()
        for call in calls.values():
            call.fail(error)
        while True:  # calls that arrived but were never admitted
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP:
                item[2].fail(error)
