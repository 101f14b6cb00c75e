"""Ends what a driver's local Ray cluster left behind once the driver is gone, `kill -9` included.

    python advdistill/reaper.py DRIVER_PID RUN_ID

`advdistill.cli.init_ray` starts it (in its own session, so Ctrl-C in the terminal does not reach
it) when it starts a local cluster, after putting `RUN_ID` in the environment under
`RUN_MARKER`: the GCS, the raylet, its agents and every worker inherit it. The reaper waits for its
parent (the driver) to go, gives a clean exit a moment to run its own `ray.shutdown()`, then
terminates — and after a grace period kills — every process still carrying the marker, and exits.
Without it, a driver killed with SIGKILL left 4 (curation) to 13 (training) Ray processes alive
(agents and workers orphaned under init). It imports nothing but the standard library and psutil.
"""

from __future__ import annotations

import os
import sys
import time

RUN_MARKER = "ADVDISTILL_RUN_ID"
POLL_S = 0.5
CLEAN_EXIT_GRACE_S = 3.0  # a driver's own ray.shutdown() at exit goes first
TERM_GRACE_S = 5.0


def marked_processes(run_id: str) -> list:
    """Processes (not this one) whose environment carries `RUN_MARKER=run_id`."""
    import psutil

    found = []
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        try:
            if proc.environ().get(RUN_MARKER) == run_id:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            continue
    return found


def reap(run_id: str) -> int:
    """Terminate, then kill, every process of the run; returns how many there were."""
    import psutil

    procs = marked_processes(run_id)
    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=TERM_GRACE_S)
    for proc in alive + marked_processes(run_id):  # and any that started meanwhile
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    return len(procs)


def main(argv: list[str]) -> None:
    driver, run_id = int(argv[0]), argv[1]
    while os.getppid() == driver:  # the driver is our parent: when it dies we are re-parented
        time.sleep(POLL_S)
    time.sleep(CLEAN_EXIT_GRACE_S)
    reap(run_id)


if __name__ == "__main__":
    main(sys.argv[1:])
