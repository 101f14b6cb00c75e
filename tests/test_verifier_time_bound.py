"""SPEC §3: verification never raises and is bounded in time, ≤ 1 s per response whatever the
input, in any thread or process, without a guard that rejects valid answers.

The bound asserted is SPEC's 1 s per response, timed from the call (the pool's limit is 0.6 s:
the rest is the margin for extraction, the kill and a loaded machine); `bench/scoring.py`
measures the worst case. The one-time start-up of a process's pool is paid in a fixture: it is
not part of a response's time.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time

import pytest

from advdistill.scoring import answers_match, is_correct
from advdistill.scoring import math_verify_pool
from advdistill.scoring.math_verify_pool import MathVerifyPool

BOUND_S = 1.0

# Inputs on which sympy works in C for minutes (or runs out of memory): SIGALRM cannot stop them.
EXPLOSIVE = [
    "10^{10^{10}}",
    "9^{9^{9}}",
    "2^{2^{2^{2^{2^{2}}}}}",
    "1000000!",
    "(10^{10})!",
    "\\binom{10^{12}}{10^{6}}",
    "\\frac{10^{10^{8}}}{3^{10^{8}}}",
]


@pytest.fixture(scope="module", autouse=True)
def _warm_pool():
    math_verify_pool.warm_up()


@pytest.fixture(autouse=True)
def _fresh_cache():
    math_verify_pool._cached_verdict.cache_clear()  # every test times real comparisons


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def in_thread(fn, *args):
    """fn(*args) in a new thread, as Ray Serve scores: (result, seconds)."""
    out = {}
    thread = threading.Thread(target=lambda: out.update(value=timed(fn, *args)))
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive(), "verification hung in a thread"
    return out["value"]


def test_power_tower_answer_is_bounded_in_the_main_thread():
    verdict, seconds = timed(answers_match, "10^{10^{10}}", "7", "open_s1")
    assert verdict is False and seconds < BOUND_S


def test_power_tower_answer_is_bounded_in_a_worker_thread():
    verdict, seconds = in_thread(answers_match, "10^{10^{10}}", "7", "open_s1")
    assert verdict is False and seconds < BOUND_S


@pytest.mark.parametrize("where", ["main thread", "worker thread"])
def test_power_tower_reference_is_bounded(where):
    run = timed if where == "main thread" else in_thread
    verdict, seconds = run(answers_match, "7", "9^{9^{9}}", "open_s1")
    assert verdict is False and seconds < BOUND_S
    # math-verify decides this one from the unevaluated expressions, quickly: the bound is what counts
    verdict, seconds = run(is_correct, "<answer>\\boxed{9^{9^{9}}}</answer>", "9^{9^{9}}", "open_rs")
    assert isinstance(verdict, bool) and seconds < BOUND_S


@pytest.mark.parametrize("expression", EXPLOSIVE)
def test_explosive_expressions_are_bounded_on_either_side(expression):
    for answer, reference in ((expression, "5"), ("5", expression)):
        verdict, seconds = timed(answers_match, answer, reference, "open_s1")
        assert isinstance(verdict, bool) and seconds < BOUND_S, (answer, reference, seconds)


def test_a_killed_worker_is_replaced_without_making_the_next_call_wait():
    assert answers_match("10^{10^{10}}", "7", "open_s1") is False
    verdict, seconds = timed(answers_match, "2\\sqrt{2}", "\\sqrt{8}", "open_s1")
    assert verdict is True and seconds < 0.5 * BOUND_S
    for _ in range(3):  # several kills in a row
        math_verify_pool._cached_verdict.cache_clear()
        assert answers_match("9^{9^{9}}", "1", "open_s1") is False
    verdict, seconds = timed(answers_match, "\\frac{\\sqrt{3}}{2}", "\\sqrt{3}/2", "open_s1")
    assert verdict is True and seconds < 0.5 * BOUND_S


def test_concurrent_threads_each_get_a_bounded_verdict():
    # The pool's one-time start (its fork server: ~0.5 s quiet, more on a busy machine) paid first,
    # as the scoring actors do in their constructors; it starts one worker, so six callers still
    # outnumber the idle workers.
    math_verify_pool.warm_up()
    jobs = [("10^{10^{10}}", "7", False), ("\\binom{8}{3}", "56", True), ("7", "9^{9^{9}}", False),
            ("6!", "720", True), ("x^2+2x+1", "(x+1)^2", True), ("2^{2^{2^{2^{2^{2}}}}}", "3", False)]
    results = [None] * len(jobs)

    def run(i, answer, reference):
        results[i] = timed(answers_match, answer, reference, "open_s1")

    threads = [threading.Thread(target=run, args=(i, a, r)) for i, (a, r, _) in enumerate(jobs)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert [verdict for verdict, _ in results] == [expected for _, _, expected in jobs]
    # more threads than idle workers: each caller still gets its own worker, and its own bound
    assert max(seconds for _, seconds in results) < BOUND_S, results
    assert time.perf_counter() - start < 2 * BOUND_S


def test_concurrent_power_towers_do_not_queue_behind_each_other():
    """Serve scores in 4 threads: 4 power towers at once each end within the bound, rather than
    0.6, 1.2, 1.8 and 2.4 s behind each other."""
    results = [None] * 4

    def run(i):
        results[i] = timed(answers_match, f"10^{{10^{{{10 + i}}}}}", "7", "open_s1")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(results))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert all(verdict is False for verdict, _ in results)
    assert max(seconds for _, seconds in results) < BOUND_S, results


def _score_in_child(queue) -> None:
    """In another process: the first LaTeX answer pays the start-up, then the bound holds."""
    from advdistill.scoring import answers_match as match
    from advdistill.scoring import math_verify_pool as pool

    pool.warm_up()
    results = [timed(match, answer, reference, "open_s1")
               for answer, reference in (("10^{10^{10}}", "7"), ("\\binom{8}{3}", "56"))]
    queue.put(results)


def test_bound_holds_in_another_process_even_a_daemonic_one():
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_score_in_child, args=(queue,), daemon=True)  # as pool workers are
    child.start()
    (tower, tower_s), (binom, binom_s) = queue.get(timeout=120)
    child.join(timeout=30)
    assert tower is False and tower_s < BOUND_S
    assert binom is True and binom_s < BOUND_S


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_no_process_outlives_its_pool():
    pool = MathVerifyPool()
    try:
        pool.warm_up()
        assert pool.verify("1", "1") is True
        with pytest.raises(math_verify_pool._TimedOut):
            pool.verify("7", "10^{10^{10}}")
        server = pool._server.process.pid
        workers = [w.pid for w in pool._idle]
        assert _alive(server) and workers and all(_alive(pid) for pid in workers)
    finally:
        pool.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (_alive(server) or any(_alive(pid) for pid in workers)):
        time.sleep(0.05)
    assert not _alive(server) and not any(_alive(pid) for pid in workers)


def test_never_raises_on_odd_inputs():
    odd = [None, "", "}", "\\boxed{", "\\frac{1}{0}", "\x00", "\\begin{pmatrix}", "x" * 100_000, 12, 3.5]
    for answer in odd:
        for reference in ("7", "\\frac{1}{2}", None):
            for task in ("open_s1", "gsm8k", "gsm_plus", "mmlu_pro"):
                verdict, seconds = timed(answers_match, answer, reference, task)
                assert isinstance(verdict, bool) and seconds < BOUND_S


def test_a_dead_fork_server_is_replaced():
    """If the fork server is killed (say by the OOM killer), its workers die with it; the next
    comparison gets a fresh server and a correct verdict, not a stale worker's failure."""
    pool = MathVerifyPool()
    try:
        pool.warm_up()
        assert pool.verify("\\sqrt{8}", "2\\sqrt{2}") is True
        server = pool._server.process
        server.kill()
        server.wait(timeout=5)
        assert pool.verify("\\frac{\\sqrt{3}}{2}", "\\sqrt{3}/2") is True
        assert pool._server.process.pid != server.pid
    finally:
        pool.close()
