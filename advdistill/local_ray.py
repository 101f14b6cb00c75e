"""Ray for a run started on this machine: join the job's cluster, or start a local one that ends
with its driver, `kill -9` included.

`init_ray` joins the cluster `ray job submit` names (RAY_ADDRESS) or starts a local one, with the
settings the stages rely on (`RAY_ENV_DEFAULTS`) and the secrets forwarded by name
(`FORWARDED_BY_NAME`) in the runtime env. A local cluster is the driver's own: `init_ray` puts a
run id in the environment under `RUN_MARKER` (the GCS, the raylet, its agents and every worker
inherit it) and starts this file as the reaper, in its own session so that Ctrl-C in the terminal
does not reach it:

    python advdistill/local_ray.py DRIVER_PID RUN_ID

The reaper waits for its parent (the driver) to go, gives a clean exit a moment to run its own
`ray.shutdown()`, then terminates — and after a grace period kills — every process still carrying
the marker, and exits. Without it, a driver killed with SIGKILL left 4 (curation) to 13
(training) Ray processes alive (agents and workers orphaned under init). At module level this
file imports only the standard library and psutil: the reaper needs neither Ray nor the package.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psutil

RUN_MARKER = "ADVDISTILL_RUN_ID"
POLL_S = 0.5
CLEAN_EXIT_GRACE_S = 3.0  # a driver's own ray.shutdown() at exit goes first
TERM_GRACE_S = 5.0

# Ray settings the stages rely on (FIELD-NOTES): Ray Train V2 otherwise blocks ~2 s in every
# `ray.train.report`, and repeats every worker print twice.
RAY_ENV_DEFAULTS = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
}

# Secrets every worker may need, forwarded by name from the driver's environment when set there
# (Ray workers get their node's environment, not the driver's); their values never reach a config,
# run.json or a log. HF_TOKEN: gated or rate-limited hub downloads on the nodes. ADVDISTILL_TASKS
# (not a secret): the tasks the driver's config declared, which every worker registers when it
# imports the package (advdistill.task_declaration).
FORWARDED_BY_NAME = ("HF_TOKEN", "ADVDISTILL_TASKS")


def driver_env_vars() -> dict[str, str]:
    """The RAY_ENV_DEFAULTS for ray.init's runtime env, and the FORWARDED_BY_NAME variables the
    driver has. Inside `ray job submit`, Ray merges the job's runtime env (RAY_JOB_CONFIG_JSON_ENV_VAR)
    with ray.init's and refuses a key set in both: the job's own settings win, these fill in the rest."""
    job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    job_env = (job.get("runtime_env") or {}).get("env_vars") or {}
    env = {key: os.environ.get(key, value) for key, value in RAY_ENV_DEFAULTS.items() if key not in job_env}
    env.update({key: os.environ[key] for key in FORWARDED_BY_NAME if os.environ.get(key) and key not in job_env})
    return env


def init_ray(num_cpus: int | None = None) -> None:
    """Join the job's cluster (`ray job submit` sets RAY_ADDRESS) or start a local one."""
    import ray  # Ray: not loaded by `--help`, the checks that run before it starts, nor the reaper

    if ray.is_initialized():
        return
    for key, value in RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    env = driver_env_vars()
    kwargs: dict[str, Any] = {"runtime_env": {"env_vars": env} if env else None, "log_to_driver": True}
    if not os.environ.get("RAY_ADDRESS"):
        # A local cluster: at least 4 logical CPUs, so that on a 2-core laptop two Train workers,
        # a generation actor and its scoring tasks, or the served models, fit side by side
        # (Ray waits silently for CPUs that never free up otherwise).
        kwargs.update(include_dashboard=False, num_cpus=num_cpus or max(os.cpu_count() or 1, 4))
        # The local cluster is this driver's: it must not outlive it, even after a SIGKILL.
        start_reaper()
    ray.init(**kwargs)


def start_reaper() -> None:
    """Mark this driver's local cluster (every process it starts inherits the environment) and
    start the reaper (this file as a script), which ends the marked processes once this driver is gone."""
    run_id = os.environ.setdefault(RUN_MARKER, uuid.uuid4().hex)
    subprocess.Popen([sys.executable, str(Path(__file__).resolve()), str(os.getpid()), run_id],
                     start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, close_fds=True)


# ---------------------------------------------------------------- the reaper


def marked_processes(run_id: str) -> list:
    """Processes (not this one) whose environment carries `RUN_MARKER=run_id`."""
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
