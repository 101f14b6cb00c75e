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

Requests are matched to their outputs by id. `LLM.enqueue` returns the engine's internal ids,
which vLLM 0.32 forms as the external id (what outputs carry: `LLM`'s counter) + "-" + 8 hex
characters; `external_id` takes that apart only when an id has exactly that form (any other id is
kept whole), and a finished output that matches no request this loop holds fails every call with
`RequestIdMismatch` naming both ids — a changed id format is an error at the first output, never a
call that waits forever.

A watchdog thread fails the loop when one engine step has not returned for `stall_timeout_s`
while requests wait (a hung kernel or collective, a stopped engine-core process): every waiting
call and stream gets `EngineStalled`, new calls are refused, and the owner decides what follows
(a generation actor exits so that Ray restarts it: `ray_stage.GenerationActor`). A slow engine
whose steps return is never stalled, however long its requests take.

`stream` is the same loop for one request whose partial outputs the caller wants as they come
(the OpenAI-compatible API's `stream: true`): it is added with `LLMEngine.add_request` and
`output_kind=DELTA` (`LLM.enqueue` forces final-only outputs), and every step's new text for it is
handed to the caller's queue.
"""

from __future__ import annotations

import itertools
import queue
import re
import threading
import time
from typing import Any, Iterator, Sequence

from advdistill.generation.vllm_api import TESTED_VLLM


class EngineLoopError(RuntimeError):
    """The engine failed inside its step loop; every call then waiting got this error."""


class EngineStalled(EngineLoopError):
    """An engine step did not return within the loop's `stall_timeout_s` while requests waited."""


class RequestIdMismatch(EngineLoopError):
    """A finished output carries an id this loop never handed out: vLLM's request-id format changed."""


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


_INTERNAL_ID = re.compile(r"^(?P<external>.+)-[0-9a-f]{8}$")


def external_id(request_id: str) -> str:
    """The id a request's outputs carry, for an internal id of vLLM 0.32's form (external id,
    "-", 8 hex characters); any other id whole (whether outputs carry it is checked on delivery)."""
    match = _INTERNAL_ID.match(request_id)
    return match.group("external") if match else request_id


class StepLoop:
    """Runs `llm`'s step loop in a daemon thread for as long as the engine lives. With
    `stall_timeout_s`, a watchdog fails the loop when a step hangs (module docstring);
    `stall_at_step` is fault injection: that step (1-based) blocks until the watchdog has failed
    the loop, as a hung engine's would."""

    def __init__(self, llm: Any, stall_timeout_s: float | None = None, stall_at_step: int | None = None):
        self._llm = llm
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._waiting: dict[str, tuple[_Call, int]] = {}
        self._streams: dict[str, queue.SimpleQueue] = {}
        self._aborted: set[str] = set()
        self._stream_ids = itertools.count()
        self._broken: BaseException | None = None
        # The loop thread changes the tables below between steps; the watchdog fails them while
        # the loop thread is stuck inside a step. Both hold this lock while they do.
        self._lock = threading.Lock()
        self._step_started: float | None = None  # monotonic time the running step began; None between steps
        self._steps = 0
        self._stall_timeout_s, self._stall_at_step = stall_timeout_s, stall_at_step
        self._thread = threading.Thread(target=self._run, name="vllm-step-loop", daemon=True)
        self._thread.start()
        self._closing = threading.Event()  # wakes the watchdog at once when the loop is closed
        self._watchdog: threading.Thread | None = None
        if stall_timeout_s is not None:
            self._watchdog = threading.Thread(target=self._watch, name="vllm-step-watchdog", daemon=True)
            self._watchdog.start()

    def generate(self, prompts: Sequence[str], sampling: Sequence[Any]) -> list[Any]:
        """The finished `RequestOutput` of each prompt, in order (blocks until all are done)."""
        if self._broken is not None:
            raise self._refusal() from self._broken
        if not prompts:
            return []
        call = _Call(len(prompts))
        self._inbox.put((list(prompts), list(sampling), call))
        while not call.done.wait(timeout=1.0):
            if self._broken is not None or not self._thread.is_alive():  # it broke after this call was queued
                call.fail(self._refusal())
        if call.error is not None:
            raise call.error
        return call.outputs

    def stream(self, prompt: str, sampling: Any) -> Iterator[Any]:
        """The request's `RequestOutput`s step by step (DELTA: each holds one choice's new text),
        until the last; blocks between steps. `sampling` is changed to DELTA outputs."""
        from vllm.sampling_params import RequestOutputKind

        if self._broken is not None:
            raise self._refusal() from self._broken
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
                    if self._broken is not None or not self._thread.is_alive():
                        raise self._refusal() from None
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

    def _refusal(self) -> EngineLoopError:
        """The error a call gets once the loop has stopped: a stall or an id mismatch as itself."""
        if isinstance(self._broken, (EngineStalled, RequestIdMismatch)):
            return type(self._broken)(str(self._broken))
        return EngineLoopError(f"the engine's step loop stopped: {self._broken!r}")

    def close(self) -> None:
        """Stop the loop and wait for both threads: neither holds the engine afterwards, so the
        engine is destroyed when its owner drops it, not a second later in the watchdog's thread
        (vLLM's teardown clears process-global state another engine may be starting with)."""
        self._inbox.put(_STOP)
        self._closing.set()
        self._thread.join(timeout=30)
        if self._watchdog is not None and self._watchdog is not threading.current_thread():
            self._watchdog.join(timeout=30)

    def _watch(self) -> None:
        """Fail the loop once a step has run for longer than `stall_timeout_s`."""
        timeout = self._stall_timeout_s
        while self._broken is None and self._thread.is_alive():
            if self._closing.wait(min(1.0, timeout / 4)):
                return
            started = self._step_started
            if started is None or time.monotonic() - started <= timeout:
                continue
            with self._lock:
                if self._broken is not None or self._step_started != started:
                    continue
                waiting = len(self._waiting) + len(self._streams)
                self._broken = EngineStalled(
                    f"the vLLM engine made no progress for {timeout:g} s (engine.stall_timeout_s): step "
                    f"{self._steps} has not returned while {waiting} request(s) wait. The engine is presumed hung "
                    f"(a stuck kernel or collective, a stopped engine process); its calls fail")
                self._fail_all(self._broken)

    def _admit(self, item: tuple) -> None:
        if len(item) == 2:  # ("abort", request id) of a stream nobody reads any more
            if self._streams.pop(item[1], None) is not None:
                self._aborted.add(item[1])
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
            with self._lock:
                if self._broken is not None:  # the watchdog failed the loop while this thread was in a step
                    self._fail_all(self._broken, items)
                    return
                for item in items:
                    if item is _STOP:
                        self._broken = EngineLoopError("the engine was closed")
                        self._fail_all(self._broken)
                        return
                    self._admit(item)
            if not engine.has_unfinished_requests():
                continue
            self._steps += 1
            self._step_started = time.monotonic()
            try:
                if self._steps == self._stall_at_step:  # fault injection: a step that hangs
                    while self._broken is None:
                        time.sleep(0.05)
                    return  # the watchdog failed the loop; a hung step would never come back either
                outputs = engine.step()
            except BaseException as err:  # the engine is unusable: fail every waiting call, refuse new ones
                with self._lock:
                    self._broken = self._broken or err
                    self._fail_all(EngineLoopError(f"the engine's step failed: {err!r}"))
                return
            finally:
                self._step_started = None
            with self._lock:
                if self._broken is None:
                    self._deliver(outputs)
                if self._broken is not None:  # failed by the watchdog during the step, or by delivery
                    self._fail_all(self._broken)
                    return

    def _deliver(self, outputs: Sequence[Any]) -> None:
        for output in outputs:
            stream = self._streams.get(output.request_id)
            if stream is not None:
                stream.put(output)
                if output.finished:
                    del self._streams[output.request_id]
            elif output.finished and output.request_id in self._waiting:
                call, position = self._waiting.pop(output.request_id)
                call.deliver(position, output)
            elif output.finished and output.request_id not in self._aborted:
                held = next(iter(self._waiting), None)
                self._broken = RequestIdMismatch(
                    f"vLLM finished request {output.request_id!r}, which matches none this loop enqueued (e.g. "
                    f"{held!r}, from LLM.enqueue's internal ids): vLLM's request-id format changed. This package is "
                    f"written against vLLM {TESTED_VLLM} (the gpu extra's pin)")
                self._fail_all(self._broken)
                return

    def _fail_all(self, error: BaseException, taken: Sequence[Any] = ()) -> None:
        """Fail every waiting call and stream with `error`, and the calls still queued or just
        taken from the queue (`taken`) that were never admitted."""
        calls = {id(call): call for call, _ in self._waiting.values()}
        self._waiting.clear()
        for call in calls.values():
            call.fail(error)
        for stream in self._streams.values():
            stream.put(error)
        self._streams.clear()
        pending = list(taken)
        while True:  # calls that arrived but were never admitted
            try:
                pending.append(self._inbox.get_nowait())
            except queue.Empty:
                break
        for item in pending:
            if item is _STOP:
                continue
            if len(item) == 4:
                item[3].put(error)
            elif len(item) == 3:
                item[2].fail(error)

