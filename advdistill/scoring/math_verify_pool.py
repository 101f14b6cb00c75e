"""math-verify with a hard time bound, SPEC §3: at most `TIME_LIMIT_S` per comparison, whatever
the input, from any thread of any process; never raises.

Why worker processes: sympy's big-integer work (`10^{10^{10}}`, `9^{9^{9}}`, `1000000!`) runs in
C, where no signal can interrupt it, and signals only work in the main thread anyway (Ray Serve
scores in a worker thread). So math-verify runs in worker processes; a comparison that misses
the deadline gets its worker killed (SIGKILL) and counts as incorrect.

Why a fork server of our own (`math_verify_worker`): a fresh interpreter with math-verify loaded
forks each worker, warm, in milliseconds, and forking in that single-threaded server is safe
whatever threads this process runs. (multiprocessing's "forkserver" does the same but makes
every worker import this process's `__main__`: in a Ray worker that is Ray's worker script, and
an unguarded user script would run again.) One spare worker is kept ready, so a kill never makes
the next call wait for a replacement. Nothing outlives this process: the server exits and kills
its workers when this process closes its socket (at exit) or dies, and workers get SIGKILL when
the server goes.

Why a worker per concurrent caller: the bound is per response, counted from the call, so a
caller never queues behind another's comparison (four Serve threads each scoring a power tower
would otherwise take 0.6, 1.2, 1.8 and 2.4 s). A caller with no idle worker forks one (a few
milliseconds from the warm server); idle workers beyond `MAX_IDLE` are ended. Workers on shared
cores are fine: the limit is wall time, and legitimate comparisons take milliseconds. Only past
`MAX_BUSY` callers (a runaway, not a workload) does a call wait, and its wait counts against its
limit.

The start-up (the server's imports and its first worker, about a second) is paid once per
process, by its first LaTeX answer or by `warm_up()`; it is not part of a comparison's time.

Verdicts are cached (LRU, short inputs only): a group of responses repeats the same answers.
A timeout is not a verdict and is not cached: under load, the next try may finish in time.

A task's own verifier (`answer: custom`, `scoring.custom_verifier`) runs in a pool of the same
kind whose server imports that verifier's module instead of math-verify (`target`), for the same
reasons: a verifier that hangs in C code, or loops, is killed at its deadline.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from functools import lru_cache
from multiprocessing.connection import Connection
from pathlib import Path

log = logging.getLogger(__name__)

# The one place for the time bound. SPEC §3 allows 1 s per response; this leaves 0.4 s for
# extraction, the kill and the bookkeeping on a loaded machine. Legitimate comparisons take
# 1 ms (median) to 0.13 s (slowest of the 455 in tests/test_verifier_agreement.py) in a worker.
TIME_LIMIT_S = 0.6
# Waiting for the one-time start-up (the fork server's imports) gives up after this long.
STARTUP_LIMIT_S = 60.0


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# Idle workers kept warm between calls (at least one spare; about one per core, at most 4).
MAX_IDLE = max(2, min(4, _usable_cpus()))
# Workers comparing at once: one per concurrent caller, up to this safety cap.
MAX_BUSY = 64
CACHE_SIZE = 16_384
CACHEABLE_CHARS = 2_000  # longer pairs are not cached (the cache would hold their text)

# The fork server's protocol (`math_verify_worker`), spelled out here so that this process never
# imports that module (it loads sympy).
_READY = "ready"
_FORK, _KILL = b"F", b"K"
_PID_BYTES = 8
# The server runs the worker module's file on its own (it imports nothing from advdistill), so it
# loads math-verify and no more; `run_path` keeps the file's folder off sys.path.
_WORKER_FILE = str(Path(__file__).with_name("math_verify_worker.py"))
_SERVER_CODE = (
    "import json, runpy, sys; sys.path[:] = json.loads(sys.argv[1]); "
    "runpy.run_path(sys.argv[2], run_name='math_verify_server')['serve_forks'](int(sys.argv[3]), sys.argv[4])"
)


class _NoVerdict(Exception):
    """math-verify gave no verdict (not cached; the answer counts as incorrect)."""


class _TimedOut(_NoVerdict):
    """The comparison ran past the time limit, or its worker died (a crash in C code)."""


class _Unavailable(_NoVerdict):
    """No worker could be had."""


class _WorkerDied(Exception):
    """The worker was gone: tried again with another one, in the time left."""

    def __init__(self, message: str, time_left: float) -> None:
        super().__init__(message)
        self.time_left = time_left


class _ForkServer:
    """The process that forks warm math-verify workers (see `math_verify_worker`)."""

    def __init__(self, target: str = "") -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _SERVER_CODE, json.dumps(sys.path), _WORKER_FILE, str(theirs.fileno()), target],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        self._control = ours
        self._control.settimeout(STARTUP_LIMIT_S)  # the first fork waits for the server's imports
        self._lock = threading.Lock()
        self.started = False  # its imports done: it has forked a worker

    def ready(self) -> bool:
        return self.started and self.alive()

    def alive(self) -> bool:
        return self.process.poll() is None

    def fork_worker(self) -> tuple[int, Connection]:
        """A new worker's pid and connection (raises OSError if the server cannot fork)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with self._lock:
                socket.send_fds(self._control, [_FORK], [theirs.fileno()])
                reply = self._control.recv(_PID_BYTES)
            if len(reply) != _PID_BYTES:
                raise OSError("the math-verify fork server is gone")
            self.started = True
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return int.from_bytes(reply, "big", signed=True), Connection(ours.detach())

    def kill(self, pid: int) -> None:
        try:
            with self._lock:
                self._control.send(_KILL + pid.to_bytes(_PID_BYTES, "big", signed=True))
        except OSError:
            pass  # the server is gone, and its workers with it

    def close(self) -> None:
        try:
            self._control.close()  # the server kills its workers and exits
            self.process.wait(timeout=2.0)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()


class _Worker:
    __slots__ = ("pid", "conn", "server")

    def __init__(self, pid: int, conn: Connection, server: _ForkServer) -> None:
        self.pid, self.conn, self.server = pid, conn, server


class MathVerifyPool:
    """Worker processes running math-verify (or the verifier `target` names, `module:function`),
    each comparison bounded by `time_limit_s`."""

    def __init__(self, time_limit_s: float = TIME_LIMIT_S, max_idle: int = MAX_IDLE, max_busy: int = MAX_BUSY,
                 target: str = "") -> None:
        self.time_limit_s = time_limit_s
        self.target = target
        self.max_idle = max(1, max_idle)
        self.max_workers = max(2, max_busy)  # live workers, busy or idle
        self._server: _ForkServer | None = None
        self._server_lock = threading.Lock()
        self._cond = threading.Condition()
        self._idle: list[_Worker] = []
        self._count = 0  # live workers, plus those starting
        self._starting = 0  # spares starting in the background
        self._closed = False
        self._owner = os.getpid()  # a forked child must not close its parent's server

    # -- public --------------------------------------------------------------------------------

    def verify(self, reference: str, answer: str) -> bool:
        """math-verify's verdict on `answer` for `reference`.

        Raises `_TimedOut` past the time limit (the worker is killed) or if workers die, and
        `_Unavailable` when no worker can be had at all."""
        return self.call((reference, answer)) is True

    def call(self, request: tuple) -> object:
        """A worker's answer to `request` (math-verify: `(reference, answer)`; a task's verifier:
        `(extracted, reference, record)`), with the same time bound and errors as `verify`."""
        server = self._server
        if server is None or not server.ready():
            self.warm_up()  # the one-time start-up (or a restart after the server died): not timed
        try:
            return self._call_once(request, self.time_limit_s)
        except _WorkerDied as died:  # e.g. its fork server was killed: once more, in the time left
            try:
                return self._call_once(request, died.time_left)
            except _WorkerDied as error:
                raise _TimedOut(f"workers died: {error}") from None

    def warm_up(self) -> None:
        """Start the fork server and a worker now rather than on the first LaTeX answer."""
        self._release(self._acquire(time.monotonic() + STARTUP_LIMIT_S), healthy=True)

    def close(self) -> None:
        if os.getpid() != self._owner:
            return
        with self._cond:
            self._closed = True
            self._idle.clear()
            self._cond.notify_all()
        with self._server_lock:
            if self._server is not None:
                self._server.close()

    # -- workers -------------------------------------------------------------------------------

    def _call_once(self, request: tuple, time_limit_s: float) -> object:
        start = time.monotonic()
        worker = self._acquire(start + time_limit_s)  # getting a worker counts against the limit
        healthy = False
        try:
            worker.conn.send(request)
            if not worker.conn.poll(max(0.0, time_limit_s - (time.monotonic() - start))):
                raise _TimedOut(f"over {self.time_limit_s} s")  # killed below
            verdict = worker.conn.recv()
            healthy = True
            return verdict
        except (OSError, EOFError, ValueError) as error:
            raise _WorkerDied(repr(error), max(0.0, time_limit_s - (time.monotonic() - start))) from None
        finally:
            self._release(worker, healthy)

    def _fork_server(self) -> _ForkServer:
        with self._server_lock:
            if self._closed:
                raise _Unavailable("pool closed")
            if self._server is None or not self._server.alive():
                self._server = _ForkServer(self.target)
            return self._server

    def _start_worker(self) -> _Worker | None:
        """Fork a worker and wait until it is ready (None if it cannot start)."""
        try:
            server = self._fork_server()
            pid, conn = server.fork_worker()
            if conn.poll(STARTUP_LIMIT_S) and conn.recv() == _READY:
                return _Worker(pid, conn, server)
            server.kill(pid)
            conn.close()
        except _Unavailable:
            pass
        except Exception:  # noqa: BLE001
            log.exception("could not start a math-verify worker")
        return None

    def _kill(self, worker: _Worker) -> None:
        worker.server.kill(worker.pid)
        worker.conn.close()

    def _acquire(self, deadline: float) -> _Worker:
        """An idle worker, else a new one; past `max_workers` live ones, wait until `deadline`.
        The one-time start-up of the fork server is not bounded by `deadline` (see the module)."""
        with self._cond:
            self._drop_orphans_locked()
            while not self._idle:
                if self._closed:
                    raise _Unavailable("pool closed")
                if self._count < self.max_workers:
                    self._count += 1
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise _TimedOut(f"all {self.max_workers} math-verify workers busy")
                self._cond.wait(min(remaining, 0.1))
            else:
                worker = self._idle.pop()
                self._keep_a_spare_locked()
                return worker
        worker = self._start_worker()  # outside the lock: the first start takes a second
        if worker is None:
            with self._cond:
                self._count -= 1
            raise _Unavailable("could not start a math-verify worker")
        with self._cond:
            self._keep_a_spare_locked()
        return worker

    def _release(self, worker: _Worker, healthy: bool) -> None:
        with self._cond:
            if healthy and not self._closed and len(self._idle) < self.max_idle:
                self._idle.append(worker)
                self._cond.notify()
                return
            self._count -= 1
        self._kill(worker)
        with self._cond:
            self._keep_a_spare_locked()

    def _drop_orphans_locked(self) -> None:
        """Idle workers whose fork server died died with it (PDEATHSIG): forget them."""
        orphans = [w for w in self._idle if not w.server.alive()]
        for worker in orphans:
            self._idle.remove(worker)
            self._count -= 1
            worker.conn.close()

    def _keep_a_spare_locked(self) -> None:
        """Start a worker in the background when none is idle or starting, within the cap."""
        if self._closed or self._idle or self._starting or self._count >= self.max_workers:
            return
        self._count += 1
        self._starting += 1
        threading.Thread(target=self._start_spare, name="math-verify-spare", daemon=True).start()

    def _start_spare(self) -> None:
        worker = self._start_worker()
        with self._cond:
            self._starting -= 1
            if worker is not None and not self._closed:
                self._idle.append(worker)
                self._cond.notify()
                return
            self._count -= 1
        if worker is not None:
            self._kill(worker)


# -- one pool per process ------------------------------------------------------------------------

_pool: MathVerifyPool | None = None
_pool_pid: int | None = None
_pool_lock = threading.Lock()
_verifier_pools: dict[tuple[str, float], MathVerifyPool] = {}  # a task's own verifiers, by target and limit


def shared_pool() -> MathVerifyPool:
    """This process's pool (a forked child gets its own, never its parent's workers)."""
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool, _pool_pid = MathVerifyPool(), os.getpid()
            atexit.register(_pool.close)
        return _pool


def verifier_pool(target: str, time_limit_s: float) -> MathVerifyPool:
    """This process's pool for a task's own verifier `target` (`module:function`)."""
    with _pool_lock:
        pool = _verifier_pools.get((target, time_limit_s))
        if pool is None:
            pool = _verifier_pools[(target, time_limit_s)] = MathVerifyPool(time_limit_s, target=target)
            atexit.register(pool.close)
        return pool


def _forget_parent_pool() -> None:
    """In a forked child: fresh locks (another thread may have held them at the fork) and no
    pool; the parent's stays the parent's."""
    global _pool, _pool_pid, _pool_lock
    for pool in [_pool, *_verifier_pools.values()]:
        if pool is not None and pool._server is not None:
            try:
                pool._server._control.close()  # this process's copy only
            except OSError:
                pass
    _verifier_pools.clear()
    _pool, _pool_pid, _pool_lock = None, None, threading.Lock()


os.register_at_fork(after_in_child=_forget_parent_pool)


@lru_cache(maxsize=CACHE_SIZE)
def _cached_verdict(reference: str, answer: str) -> bool:
    return shared_pool().verify(reference, answer)


def latex_answers_match(reference: str, answer: str) -> bool:
    """math-verify's verdict on `answer` for `reference`, within `TIME_LIMIT_S`; False on timeout
    or failure. Never raises."""
    try:
        if len(reference) + len(answer) <= CACHEABLE_CHARS:
            return _cached_verdict(reference, answer)
        return shared_pool().verify(reference, answer)
    except _TimedOut:
        return False
    except _Unavailable as error:
        log.error("math-verify unavailable (%s): %r judged incorrect", error, answer[:80])
        return False
    except Exception:  # noqa: BLE001 - a verifier must never raise
        return False


def warm_up() -> None:
    """Pay this process's one-time start-up now (e.g. in an actor's constructor)."""
    try:
        shared_pool().warm_up()
    except Exception:  # noqa: BLE001
        log.exception("math-verify warm-up failed")
