"""Test nodes stop completely and alone (tests/ray_nodes.py)."""

import os

from conftest import free_port
from ray_nodes import client_server, new_temp_dir, node_processes, start_node, stop_nodes


def test_a_node_stops_with_all_its_processes_and_nothing_else():
    temp_dir = new_temp_dir()
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    client_port = free_port()
    start_node(["--head", "--node-ip-address=127.0.0.1", f"--port={free_port()}", "--num-cpus=1",
                "--include-dashboard=false", f"--ray-client-server-port={client_port}"], temp_dir, env)
    try:
        names = {p.name() for p in node_processes(temp_dir)}
        assert {"gcs_server", "raylet"} <= names
        assert client_server(client_port)  # the head's Ray Client server names no temp dir: found by port
    finally:
        stop_nodes(temp_dir)
    assert node_processes(temp_dir) == [] and client_server(client_port) == []
    assert not os.path.exists(temp_dir)
