"""Starting and stopping Ray nodes for tests without touching anyone else's Ray processes.

`ray stop` ends every Ray process on the machine — another test session's cluster, a benchmark,
a user's job. Each node started here gets its own `--temp-dir`; stopping it kills the processes
whose command line names that folder (gcs_server, raylet, agents) and everything they started
(workers rename themselves `ray::…` and no longer show the folder), never this process or its
ancestors.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil

RAY = str(Path(sys.executable).parent / "ray")


def new_temp_dir() -> str:
    # Short: Ray puts Unix sockets under it, and socket paths are limited to ~107 characters.
    return tempfile.mkdtemp(prefix="rayt-", dir="/tmp")


# A head's Ray Client server names neither its --temp-dir nor its parent on its command line, so
# it is found by the port it was given here (a free one unless ARGS name one).
_client_ports: dict[str, int] = {}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def agent_ports() -> list[str]:
    """A node's agents on free ports: several nodes on one host (and any other Ray here) would
    otherwise all take the default agent ports, and the job server finds no agent to run a job."""
    return [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}"]


def start_node(args: list[str], temp_dir: str, env: dict[str, str] | None = None) -> None:
    """`ray start ARGS --temp-dir=TEMP_DIR` (head or worker)."""
    if "--head" in args:
        given = [a for a in args if a.startswith("--ray-client-server-port=")]
        port = int(given[0].split("=", 1)[1]) if given else free_port()
        args = args if given else [*args, f"--ray-client-server-port={port}"]
        _client_ports[temp_dir] = port
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


def client_server(port: int) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmdline = " ".join(proc.info["cmdline"] or [])
            if "ray.util.client.server" in cmdline and f"--port={port} " in f"{cmdline} ":
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def freeze_nodes(temp_dir: str) -> int:
    """SIGSTOP every process of the nodes started with `temp_dir`: the node stops in the state it
    is in (what it has written stays written, nothing more happens) until `stop_nodes` kills it.
    Returns how many processes were frozen."""
    procs = node_processes(temp_dir)
    for proc in procs:
        try:
            proc.suspend()
        except psutil.NoSuchProcess:
            pass
    return len(procs)


def stop_nodes(temp_dir: str, timeout: float = 10.0) -> None:
    """Kill every process of the nodes started with `temp_dir` (the head's Ray Client server
    included), wait until they are gone, and remove the folder."""
    procs = node_processes(temp_dir)
    if temp_dir in _client_ports:
        procs += client_server(_client_ports.pop(temp_dir))
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=timeout)
    shutil.rmtree(temp_dir, ignore_errors=True)
