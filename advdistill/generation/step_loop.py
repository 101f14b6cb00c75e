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

`stream` is the same loop for one request whose partial outputs the caller wants as they come
(the OpenAI-compatible API's `stream: true`): it is added with `LLMEngine.add_request` and
`output_kind=DELTA` (`LLM.enqueue` forces final-only outputs), and every step's new text for it is
handed to the caller's queue.
"""

from __future__ import annotations

import itertools
import queue
import threading
from typing import Any, Iterator, Sequence


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
        self._streams: dict[str, queue.SimpleQueue] = {}
        self._stream_ids = itertools.count()
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

    def stream(self, prompt: str, sampling: Any) -> Iterator[Any]:
        """The request's `RequestOutput`s step by step (DELTA: each holds one choice's new text),
        until the last; blocks between steps. `sampling` is changed to DELTA outputs."""
        from vllm.sampling_params import RequestOutputKind

        if self._broken is not None:
            raise EngineLoopError(f"the engine's step loop stopped: {self._broken!r}") from self._broken
        sampling.output_kind = RequestOutputKind.DELTA
        request_id = f"stream-{next(self._stream_ids)}"
        outputs: queue.SimpleQueue = queue.SimpleQueue()
        self._inbox.put((request_id, prompt, sampling, outputs))
        finished = False
        try:
            while True:
                try:
                    item = outputs.get(timeout=1.0)
                except queue.Empty:
                    if not self._thread.is_alive():
                        raise EngineLoopError(f"the engine's step loop stopped: {self._broken!r}") from None
                    continue
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            if not finished:  # the caller stopped reading (a client gone): the engine drops the request
                self._inbox.put(("abort", request_id))

    def close(self) -> None:
        self._inbox.put(_STOP)
        self._thread.join(timeout=30)

    def _admit(self, item: tuple) -> None:
        if len(item) == 2:  # ("abort", request id) of a stream nobody reads any more
            if self._streams.pop(item[1], None) is not None:
                self._llm.llm_engine.abort_request([item[1]])
            return
        if len(item) == 4:  # a streamed request
            request_id, prompt, sampling, outputs = item
            try:
                self._llm.llm_engine.add_request(request_id, prompt, sampling)
            except Exception as err:  # noqa: BLE001 - a bad request fails its own stream only
                outputs.put(err)
                return
            self._streams[request_id] = outputs
            return
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
                stream = self._streams.get(output.request_id)
                if stream is not None:
                    stream.put(output)
                    if output.finished:
                        del self._streams[output.request_id]
                elif output.finished and output.request_id in self._waiting:
                    call, position = self._waiting.pop(output.request_id)
                    call.deliver(position, output)

    def _fail_all(self, error: BaseException) -> None:
        calls = {id(call): call for call, _ in self._waiting.values()}
        self._waiting.clear()
        for call in calls.values():
            call.fail(error)
        for stream in self._streams.values():
            stream.put(error)
        self._streams.clear()
        while True:  # calls that arrived but were never admitted
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return
            if item is _STOP:
                continue
            if len(item) == 4:
                item[3].put(error)
            elif len(item) == 3:
                item[2].fail(error)
