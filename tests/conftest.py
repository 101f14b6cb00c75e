"""Shared fixtures. Ray-backed fixtures live in the stage test modules' conftest sections below."""

from __future__ import annotations

import json
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from ray_nodes import agent_ports, new_temp_dir, start_node, stop_nodes
# Tiers: `ray`/`serve`/`e2e`/`vllm` markers from each test's fixtures and code, and `--fast`
# (`make test-fast`) with its guard.
from tiers import (pytest_addoption, pytest_collection_modifyitems, pytest_configure,  # noqa: F401
                   pytest_unconfigure)

REPO = Path(__file__).resolve().parents[1]
pytest_plugins = ["serve_fixtures"]  # the Serve app fixture of the Serve test modules
SHARED_DATA = REPO.parent / "shared" / "data"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real GSM8K / GSM-Plus / MMLU-Pro rows beside the checkout (`../shared/data`)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"reference data not found at {SHARED_DATA}")
    return SHARED_DATA


TINY_TEACHER = REPO / "models" / "tiny-teacher"
TINY_STUDENT = REPO / "models" / "tiny-student"


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TINY_TEACHER)


@dataclass(frozen=True)
class RayCluster:
    address: str  # GCS address, for ray.init / RAY_ADDRESS / serve run --address
    dashboard: str  # HTTP address of the job server, for `ray job submit`


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the whole suite, started with the real `ray start --head` (so
    jobs can be submitted to it) on loopback, and stopped at the end."""
    import ray

    from advdistill.local_ray import RAY_ENV_DEFAULTS

    env = {"RAY_AUTH_MODE": "disabled", "RAY_DATA_DISABLE_PROGRESS_BARS": "1", "RAY_USAGE_STATS_ENABLED": "0",
           **RAY_ENV_DEFAULTS}
    for key, value in env.items():
        os.environ.setdefault(key, value)
    bin_dir = Path(sys.executable).parent
    os.environ["PATH"] = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"  # jobs run this venv's python
    port, dashboard = free_port(), free_port()
    # Logical CPUs above the 2 real ones: a generation actor, scoring tasks, two Train workers and
    # Serve replicas must all be schedulable side by side (FIELD-NOTES).
    temp_dir = new_temp_dir()
    start_node(["--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=6", "--include-dashboard=true",
                "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", *agent_ports()], temp_dir)
    address = f"127.0.0.1:{port}"
    try:
        ray.init(address=address, log_to_driver=False,
                 runtime_env={"env_vars": {k: os.environ[k] for k in RAY_ENV_DEFAULTS}})
        yield RayCluster(address, f"http://127.0.0.1:{dashboard}")
    finally:
        ray.shutdown()
        stop_nodes(temp_dir)  # this cluster's processes only: `ray stop` would end every Ray process here


@pytest.fixture
def closing():
    """`closing(engine)` returns the engine and closes it when the test ends, passed or failed: a
    vLLM engine's step loop keeps it alive, and one destroyed later, at a garbage collection,
    tears down vLLM's process-global state under whichever engine runs then."""
    engines = []

    def keep(engine):
        engines.append(engine)
        return engine

    yield keep
    for engine in reversed(engines):
        engine.close()


@pytest.fixture(scope="session")
def tiny_cfg():
    from advdistill.config import load_config

    return load_config(REPO / "configs" / "tiny.yaml", [f"teacher={TINY_TEACHER}", f"student={TINY_STUDENT}"])


@pytest.fixture(scope="session")
def offline_test_metrics(ray_cluster, tiny_cfg, tmp_path_factory):
    """The offline evaluator's figures for the tiny student on 16 synthetic test problems."""
    from advdistill.config import DatasetConfig
    from advdistill.evaluation.evaluator import evaluate

    out = tmp_path_factory.mktemp("eval-student")
    metrics = evaluate(tiny_cfg, str(TINY_STUDENT), DatasetConfig(name="synthetic", split="test", limit=16), out)
    return out, metrics
