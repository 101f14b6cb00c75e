"""The child side of `math_verify_pool`: a fork server with math-verify loaded, and the workers
it forks, which compare answers until the pool kills them. The same server runs a task's own
verifier (`answer: custom`, a `module:function` import path) instead: its module is imported by
the server, so each worker forked from it starts with it loaded, and a call that raises or
returns something other than a bool answers with the reason (a string) rather than a verdict.

The server is a fresh interpreter (`python -c …`, started by the pool) that runs this file on its
own (it imports nothing from advdistill): math-verify is imported and its LaTeX parser built (the
first parse costs most of a second), so every worker forked from the server starts warm in
milliseconds. The server is single-threaded, so forking there is safe whatever threads the
pool's process runs.

Requests arrive as packets on a control socket (SOCK_SEQPACKET, so they keep their boundaries).
"F" (with the worker's end of a socket pair): fork a worker on it, answer with its pid. "K" and a
pid: kill and reap that worker (only the server reaps its children, so a pid cannot be reused
before its kill). End of the socket (the pool's process closed it or died): kill the workers and
exit.

math-verify's own timeouts are off (`parsing_timeout=None`, `timeout_seconds=None`): they use
SIGALRM, which cannot stop sympy's C-level work; the pool bounds each call from outside.
"""

from __future__ import annotations

import ctypes
import importlib
import logging
import os
import signal
import socket
import struct
from multiprocessing.connection import Connection
from typing import Any, Callable

READY = "ready"
FORK, KILL = b"F", b"K"
PID = struct.Struct("!q")


class _DropTimeoutNotice(logging.Filter):
    """math-verify warns that its own timeout is off; ours (the pool's kill) is on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_DropTimeoutNotice())


def verify_pair(reference: str, answer: str) -> bool:
    """math-verify's verdict on `answer` for `reference` (gold first), False on any error."""
    try:
        from math_verify import parse, verify  # math-verify (sympy): loaded in the workers, once

        gold = parse(f"\\boxed{{{reference}}}", parsing_timeout=None)
        pred = parse(f"\\boxed{{{answer}}}", parsing_timeout=None)
        return verify(gold, pred, timeout_seconds=None) is True
    except BaseException:  # noqa: BLE001 - RecursionError, MemoryError, ...: a verdict, not a crash
        return False


def custom_judge(target: str) -> Callable[..., Any]:
    """A task's own verifier `module:function` as a judge: (extracted, reference, record) -> True,
    False, or why there is no verdict (a string: it raised, returned a non-bool, or its module
    did not import)."""
    module, _, name = target.partition(":")
    try:
        function = getattr(importlib.import_module(module), name)
    except BaseException as error:  # noqa: BLE001 - reported per call, never a crash of the server
        failure = f"could not be imported: {type(error).__name__}: {error}"
        return lambda *request: failure

    def judge(extracted: Any, reference: Any, record: Any) -> bool | str:
        try:
            verdict = function(extracted, reference, record)
        except BaseException as error:  # noqa: BLE001 - a verifier's failure is a reason, not a crash
            return f"raised {type(error).__name__}: {error}"[:500]
        if verdict is True or verdict is False:
            return verdict
        if type(verdict).__name__ == "bool_":  # numpy's
            return bool(verdict)
        return f"returned {type(verdict).__name__}: not a bool"

    return judge


def _die_with_parent() -> None:
    """SIGKILL this worker when the server that forked it exits: a worker stuck in C code
    cannot notice on its own. (Linux; the server is single-threaded, as PDEATHSIG needs.)"""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def serve(conn: Connection, judge: Callable[..., Any] = verify_pair) -> None:
    """A worker: answer requests on `conn` with `judge(*request)` until it closes (math-verify:
    (reference, answer) requests)."""
    conn.send(READY)
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return
        except Exception:  # noqa: BLE001 - a garbled request
            conn.send(False)
            continue
        conn.send(judge(*request))


def _fork_worker(control: socket.socket, worker_fd: int, children: set[int], judge: Callable[..., Any]) -> None:
    pid = os.fork()
    if pid == 0:  # the worker
        code = 0
        try:
            control.close()
            _die_with_parent()
            serve(Connection(worker_fd), judge)
        except BaseException:  # noqa: BLE001
            code = 1
        finally:
            os._exit(code)
    os.close(worker_fd)
    children.add(pid)
    control.sendall(PID.pack(pid))


def _kill(pid: int, children: set[int]) -> None:
    if pid in children:  # unreaped, so the pid is still this child's
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except OSError:
            pass
        children.discard(pid)


def _reap(children: set[int]) -> None:
    for pid in list(children):
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done:
            children.discard(pid)


def serve_forks(control_fd: int, target: str = "") -> None:
    """The fork server's loop (see the module doc): workers judging with math-verify, or with the
    verifier `target` names (`module:function`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the pool's process's business
    judge = custom_judge(target) if target else verify_pair
    if not target:
        _warm_up()
    control = socket.socket(fileno=control_fd)
    children: set[int] = set()
    try:
        while True:
            message, fds, _, _ = socket.recv_fds(control, 1 + PID.size, 1)
            if not message:
                return  # the pool's process closed the socket or died
            _reap(children)
            if message[:1] == FORK and fds:
                _fork_worker(control, fds[0], children, judge)
            elif message[:1] == KILL and len(message) == 1 + PID.size:
                _kill(PID.unpack(message[1:])[0], children)
            for fd in fds[1:]:
                os.close(fd)
    finally:
        for pid in list(children):
            _kill(pid, children)


def _warm_up() -> None:
    """math-verify's imports and its parser's first build, in the server, before any fork."""
    try:
        verify_pair("x^2+1", "1+x^2")
    except BaseException:  # noqa: BLE001
        pass
