"""Autoscaling with cluster.yaml's node types (issue 14, item 4), on Ray's own fake multi-node
provider (`provider: {type: fake_multinode}`, ray/autoscaler/_private/fake_multi_node/): the
head's autoscaler "launches" a worker node as a new local raylet with the node type's
resources. The node types, custom resources, caps and head are cluster.yaml's; only the sizes
shrink to fit this machine (1 CPU each, no GPU) and the idle timeout to seconds.

Shown: no worker node exists until a stage asks for a node type's custom resource; a task and an
actor asking for it get a node of exactly that type, launched from zero; the node is released
after the idle timeout once the work is done; a node type nobody asks for is never started.

Started with the real `ray start --head --autoscaling-config=…` in its own --temp-dir and stopped
with tests/ray_nodes.py (the fake workers are the head's monitor's children and live under the
same folder); never `ray stop`, which would end every Ray process on the machine. The driver runs
in a spawned process: a driver connects to one cluster, and this pytest process is already the
suite's session driver (conftest.ray_cluster) — `ray.init`/`ray.shutdown` here would cut it off."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor

import pytest
import yaml

from conftest import REPO, free_port
from ray_nodes import new_temp_dir, start_node, stop_nodes

pytestmark = pytest.mark.slow

IDLE_TIMEOUT_S = 6


def fake_config(port: int) -> dict:
    """cluster.yaml with the fake multi-node provider and tiny sizes."""
    raw = yaml.safe_load((REPO / "cluster.yaml").read_text())
    head = raw["head_node_type"]
    types = {"ray.head.default": {"resources": {"CPU": 1}, "node_config": {}, "max_workers": 0}}
    for name, node_type in raw["available_node_types"].items():
        if name == head:
            assert node_type["resources"] == {}  # the head declares no custom resource here either
            continue
        types[name] = {"resources": {"CPU": 1, **{k: 1 for k in node_type["resources"]}},
                       "node_config": {}, "min_workers": node_type["min_workers"],
                       "max_workers": min(node_type["max_workers"], 1)}
    return {
        "cluster_name": "advdistill-fake",
        "max_workers": raw["max_workers"],
        "upscaling_speed": raw["upscaling_speed"],
        "idle_timeout_minutes": IDLE_TIMEOUT_S / 60,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": f"127.0.0.1:{port}"},
        "available_node_types": types,
        "head_node_type": "ray.head.default",
        "auth": {}, "docker": {}, "file_mounts": {}, "cluster_synced_files": [],
        "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
    }


@pytest.fixture
def autoscaling_cluster(tmp_path) -> str:
    """The GCS address of a fake autoscaling cluster, stopped after the test."""
    port, client = free_port(), free_port()
    config = tmp_path / "fake-cluster.json"
    config.write_text(json.dumps(fake_config(port)))
    env = dict(os.environ, RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1", RAY_AUTH_MODE="disabled",
               RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    temp_dir = new_temp_dir()
    try:
        start_node(["--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=1",
                    "--include-dashboard=false", f"--ray-client-server-port={client}",
                    f"--autoscaling-config={config}"], temp_dir, env)
        yield f"127.0.0.1:{port}"
    finally:
        stop_nodes(temp_dir)


def worker_nodes() -> dict[str, set[str]]:
    """Alive non-head nodes → their custom resources."""
    import ray

    out = {}
    for node in ray.nodes():
        custom = {k for k in node["Resources"] if k in ("inference", "train", "serve")}
        if node["Alive"] and custom:
            out[node["NodeID"]] = custom
    return out


def wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def drive_the_autoscaler(address: str) -> None:
    """The checks, as the driver of the fake cluster (runs in its own process)."""
    import ray

    ray.init(address=address, log_to_driver=False)
    time.sleep(3)  # a few autoscaler rounds: nothing is asked for, nothing starts
    assert worker_nodes() == {}

    @ray.remote(num_cpus=1, resources={"inference": 1})
    def generate() -> str:
        return ray.get_runtime_context().get_node_id()

    started = time.time()
    node_id = ray.get(generate.remote(), timeout=90)  # waits for the autoscaler to start a node
    assert worker_nodes() == {node_id: {"inference"}}  # exactly the type that was asked for
    print(f"inference node up and the task done in {time.time() - started:.1f} s")

    @ray.remote(num_cpus=1, resources={"train": 1})
    class TrainWorker:
        def node(self) -> str:
            return ray.get_runtime_context().get_node_id()

    actor = TrainWorker.remote()
    train_node = ray.get(actor.node.remote(), timeout=90)
    assert train_node != node_id
    nodes = worker_nodes()
    assert nodes.get(train_node) == {"train"} and "serve" not in set().union(*nodes.values())

    # Idle (its task is done) → released; the train node holds an actor → kept.
    wait_for(lambda: node_id not in worker_nodes(), 60 + IDLE_TIMEOUT_S, "the idle inference node to go")
    assert train_node in worker_nodes()
    ray.kill(actor)
    released = time.time()
    wait_for(lambda: worker_nodes() == {}, 60 + IDLE_TIMEOUT_S, "the idle train node to go")
    print(f"train node released {time.time() - released:.1f} s after its actor ended")


def test_a_node_type_is_launched_from_zero_on_demand_and_released_when_idle(autoscaling_cluster):
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as driver:
        driver.submit(drive_the_autoscaler, autoscaling_cluster).result(timeout=400)
