"""Autoscaling with cluster.yaml's node types (issues 14.4 and 26.1), on Ray's own fake multi-node
provider (`provider: {type: fake_multinode}`, ray/autoscaler/_private/fake_multi_node/): the
head's autoscaler "launches" a worker node as a new local raylet with the node type's
resources. The node types, custom resources, caps and head are cluster.yaml's; only the sizes
shrink to fit this machine (1 CPU each; GPUs logical: Ray schedules them, the engine computes on
the CPU) and the idle timeout to seconds.

Shown, with the per-stage node types (the option cluster.yaml leaves off, turned on here): no
worker node exists until a stage asks for a node type's custom resource; a task and an actor
asking for it get a node of exactly that type, launched from zero; the node is released after the
idle timeout once the work is done; a node type nobody asks for is never started.

Shown, with the default GPU node type declaring logical GPUs and no node at start: curation
without `max_actors` is refused at submit; with `max_actors` 3 its pool grows past one actor as
the autoscaler adds nodes; every engine hangs once mid-run (`ADVDISTILL_STALL_AT_STEP`, a step
that never returns), the watchdog fails it, Ray restarts the actor and every id is written
exactly once; the accelerator-hours the actors recorded match the GPU-seconds Ray's scheduler
saw held (sampled from the cluster's resources) within 10%.

Started with the real `ray start --head --autoscaling-config=…` in its own --temp-dir and stopped
with tests/ray_nodes.py (the fake workers are the head's monitor's children and live under the
same folder); never `ray stop`, which would end every Ray process on the machine. The driver runs
in a spawned process: a driver connects to one cluster, and this pytest process is already the
suite's session driver (conftest.ray_cluster) — `ray.init`/`ray.shutdown` here would cut it off."""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
import yaml

from conftest import REPO, free_port
from ray_nodes import new_temp_dir, start_node, stop_nodes

pytestmark = pytest.mark.slow

IDLE_TIMEOUT_S = 6


CLUSTER = yaml.safe_load((REPO / "cluster.yaml").read_text())
PER_STAGE = ("inference_gpu", "train_gpu", "serve_gpu")  # cluster.yaml's option, off there
DEFAULT_GPU_TYPE = "gpu_8x_h100"


def fake_config(port: int) -> dict:
    """cluster.yaml's per-stage node types, turned on (one node each), with the fake multi-node
    provider and tiny sizes."""
    raw = CLUSTER
    head = raw["head_node_type"]
    types = {"ray.head.default": {"resources": {"CPU": 1}, "node_config": {}, "max_workers": 0}}
    for name, node_type in raw["available_node_types"].items():
        if name == head:
            assert node_type["resources"] == {}  # the head declares no custom resource here either
            continue
        if name not in PER_STAGE:
            continue
        assert node_type["max_workers"] == 0  # off in cluster.yaml: enabling it is what this test runs
        types[name] = {"resources": {"CPU": 1, **{k: 1 for k in node_type["resources"]}},
                       "node_config": {}, "min_workers": node_type["min_workers"], "max_workers": 1}
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


GPU_NODES = 3  # the default GPU type's cap here: the pool may grow to three one-GPU nodes


def gpu_fake_config(port: int) -> dict:
    """cluster.yaml's default GPU node type, sized down: one logical GPU and two CPUs per node (the
    tiny config's engine computes with two threads), none at start, at most GPU_NODES; the head
    gets two CPUs (the driver's scoring and writing tasks)."""
    gpu_type = CLUSTER["available_node_types"][DEFAULT_GPU_TYPE]
    assert gpu_type["min_workers"] == 0 and gpu_type["resources"]["GPU"] > 0
    config = fake_config(port)
    config["max_workers"] = GPU_NODES
    config["available_node_types"] = {
        "ray.head.default": {"resources": {"CPU": 2}, "node_config": {}, "max_workers": 0},
        DEFAULT_GPU_TYPE: {"resources": {"CPU": 2, "GPU": 1}, "node_config": {}, "min_workers": 0,
                           "max_workers": GPU_NODES}}
    return config


def start_fake_cluster(config: dict, folder, head_cpus: int) -> tuple[str, str]:
    """Start a fake autoscaling cluster with `config`: (its GCS address, its temp folder)."""
    port, client = config["provider"]["gcs_address"].rsplit(":", 1)[1], free_port()
    path = folder / "fake-cluster.json"
    path.write_text(json.dumps(config))
    env = dict(os.environ, RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1", RAY_AUTH_MODE="disabled",
               RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    temp_dir = new_temp_dir()
    try:
        start_node(["--head", "--node-ip-address=127.0.0.1", f"--port={port}", f"--num-cpus={head_cpus}",
                    "--include-dashboard=false", f"--ray-client-server-port={client}",
                    f"--autoscaling-config={path}"], temp_dir, env)
    except BaseException:
        stop_nodes(temp_dir)
        raise
    return f"127.0.0.1:{port}", temp_dir


@pytest.fixture
def autoscaling_cluster(tmp_path) -> str:
    """The GCS address of a fake autoscaling cluster of the per-stage node types, stopped after the test."""
    address, temp_dir = start_fake_cluster(fake_config(free_port()), tmp_path, head_cpus=1)
    try:
        yield address
    finally:
        stop_nodes(temp_dir)


@pytest.fixture
def gpu_autoscaling_cluster(tmp_path) -> tuple[str, str]:
    """(GCS address, temp folder) of a fake autoscaling cluster of the default GPU node type."""
    address, temp_dir = start_fake_cluster(gpu_fake_config(free_port()), tmp_path, head_cpus=2)
    try:
        yield address, temp_dir
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


STALL_AT_STEP, STALL_TIMEOUT_S, PROMPTS = 12, 4, 96


class HeldGpus:
    """GPU-seconds held as Ray's scheduler sees them — the cluster's GPUs less its available ones,
    sampled every 0.2 s from a thread — and the most held at once."""

    def __init__(self):
        self.seconds, self.most, self._stop = 0.0, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        import ray

        last = time.monotonic()
        while not self._stop.wait(0.2):
            held = ray.cluster_resources().get("GPU", 0) - ray.available_resources().get("GPU", 0)
            now = time.monotonic()
            self.seconds += held * (now - last)
            self.most, last = max(self.most, held), now

    def stop(self) -> "HeldGpus":
        self._stop.set()
        self._thread.join()
        return self


def curate_on_logical_gpus(address: str, output: str) -> dict:
    """The driver of the GPU test (its own process): curation refused without a max, then run with
    max_actors 3 while every engine hangs once. Returns what the test checks."""
    import ray

    from advdistill.config import load_config, with_overrides
    from advdistill.curate.stage import curate
    from advdistill.generation.pool import PoolError, autoscaling_evidence

    os.environ["ADVDISTILL_STALL_AT_STEP"] = str(STALL_AT_STEP)  # read by this driver, handed to the actors
    ray.init(address=address, log_to_driver=False)
    assert ray.cluster_resources().get("GPU", 0) == 0  # no GPU node until curation asks for one
    wait_for(autoscaling_evidence, 60, "the autoscaler's first report")  # names the head's type: it launches
    cfg = load_config(REPO / "configs" / "tiny.yaml", [
        f"teacher={REPO / 'models' / 'tiny-teacher'}", f"curate.dataset.limit={PROMPTS}",
        "curate.engine.batch_size=4", "curate.resources.use_gpu=true",
        f"curate.engine.stall_timeout_s={STALL_TIMEOUT_S}", "curate.progress_every_s=5"])
    try:
        curate(cfg, output)
        refusal = None
    except PoolError as err:
        refusal = str(err)
    held = HeldGpus()
    try:
        summary = curate(with_overrides(cfg, {"curate.resources.max_actors": GPU_NODES}), output)
    except Exception as err:  # Ray's task errors do not pickle back to the test process: their text does
        raise RuntimeError(f"{type(err).__name__}: {err}") from None
    held.stop()
    restarts = [a["NumRestarts"] for a in ray._private.state.actors().values()
                if "GenerationActor" in a["ActorClassName"]]
    ray.shutdown()
    return {"refusal": refusal, "summary": summary, "held_gpu_seconds": held.seconds, "most_gpus_held": held.most,
            "restarts": restarts}


def test_curation_grows_its_pool_with_the_cluster_survives_a_hung_engine_and_counts_what_it_held(
        gpu_autoscaling_cluster, tmp_path):
    from advdistill.curate.store import CurateOutput

    address, temp_dir = gpu_autoscaling_cluster
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as driver:
        seen = driver.submit(curate_on_logical_gpus, address, str(tmp_path / "curate")).result(timeout=800)
    # Refused at submit on this autoscaling cluster, naming the key to set.
    assert seen["refusal"] and "--set curate.resources.max_actors=N" in seen["refusal"]
    summary = seen["summary"]
    ids = [row["id"] for table in CurateOutput(tmp_path / "curate").read() for row in table.to_pylist()]
    assert len(ids) == len(set(ids)) == summary["prompts_written"] == PROMPTS  # every id exactly once
    # The pool grew past one actor as nodes came up (recorded by the actors, and seen by Ray).
    pool = summary["generation_actors"]
    assert pool["most_at_once"] > 1 and seen["most_gpus_held"] > 1
    # Every engine hung once: the watchdog failed it, the actor exited, Ray restarted it.
    assert seen["restarts"] and all(n >= 1 for n in seen["restarts"]) and pool["started"] > pool["most_at_once"]
    logs = "".join(p.read_text(errors="replace") for p in Path(temp_dir).rglob("*.err"))
    assert f"made no progress for {STALL_TIMEOUT_S} s" in logs
    # What the actors recorded against what Ray's scheduler saw held.
    recorded = summary["accelerator_hours"] * 3600
    print(f"recorded {recorded:.1f} GPU-s, scheduler saw {seen['held_gpu_seconds']:.1f} GPU-s, "
          f"{pool['started']} leases, at most {pool['most_at_once']} actors at once")
    assert recorded == pytest.approx(seen["held_gpu_seconds"], rel=0.10)


def test_a_cluster_without_an_autoscaling_config_is_a_fixed_one(ray_cluster):
    # The suite's `ray start --head` runs Ray's monitor with its read-only provider: it reports,
    # and launches nothing. Pools there are sized from the GPUs present (none: one CPU engine).
    from advdistill.config import EngineConfig, ResourcesConfig
    from advdistill.generation.pool import actor_pool, autoscaling_evidence

    assert autoscaling_evidence() is None
    assert actor_pool(ResourcesConfig(), EngineConfig(), "curate").max_actors == 1
