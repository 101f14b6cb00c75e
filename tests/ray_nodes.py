"""Starting and stopping Ray nodes for tests without touching anyone else's Ray processes.

`ray stop` ends every Ray process on the machine — another test session's cluster, a benchmark,
a user's job. Each node started here gets its own `--temp-dir`; stopping it kills the processes
whose command line names that folder (gcs_server, raylet, agents) and everything they started
(workers rename themselves `ray::…` and no longer show the folder), never this process or its
ancestors.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil

RAY = str(Path(sys.executable).parent / "ray")


def new_temp_dir() -> str:
    # Short: Ray puts Unix sockets under it, and socket paths are limited to ~107 characters.
    return tempfile.mkdtemp(prefix="rayt-", dir="/tmp")


def start_node(args: list[str], temp_dir: str, env: dict[str, str] | None = None) -> None:
    """`ray start ARGS --temp-dir=TEMP_DIR` (head or worker)."""
    subprocess.run([RAY, "start", *args, f"--temp-dir={temp_dir}", "--disable-usage-stats"], check=True,
                   env=env or dict(os.environ), stdout=subprocess.DEVNULL)


def node_processes(temp_dir: str) -> list[psutil.Process]:
    """The processes of the nodes started with `temp_dir`, and their descendants."""
    spared = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    roots = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if proc.pid not in spared and temp_dir in " ".join(proc.info["cmdline"] or []):
                roots.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    found: dict[int, psutil.Process] = {}
    for root in roots:
        try:
            for proc in (root, *root.children(recursive=True)):
                if proc.pid not in spared:
                    found[proc.pid] = proc
        except psutil.NoSuchProcess:
            continue
    return list(found.values())


def stop_nodes(temp_dir: str, timeout: float = 10.0) -> None:
    """Kill every process of the nodes started with `temp_dir`; waits until they are gone."""
    procs = node_processes(temp_dir)
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=timeout)
