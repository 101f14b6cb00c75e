"""Cluster-ready generation, the pure parts (issue 26.1–2): the pool's bounds as the driver decides
them before anything starts (`generation.pool.plan_pool`), what a pool held as its actors report
it (`generation.ledger.held`), the vLLM API check against a release lacking what the step loop
calls, the guarded request-id mapping, and HF_TOKEN forwarded by name. The same rules on a real
autoscaling cluster with logical GPUs: tests/test_autoscaler.py."""

from __future__ import annotations

import json

import pytest

from advdistill.local_ray import driver_env_vars
from advdistill.config import ConfigError, EngineConfig, ResourcesConfig, load_config
from advdistill.generation.ledger import held
from advdistill.generation.pool import PoolError, plan_pool
from advdistill.generation.step_loop import external_id
from advdistill.generation.vllm_api import TESTED_VLLM, IncompatibleVLLM, check_vllm_api

from conftest import REPO

AUTOSCALING = "an autoscaler reports its status to the GCS"


def plan(resources: dict, engine: dict | None = None, *, gpus: int = 0, autoscaling: str | None = None, where="curate"):
    return plan_pool(ResourcesConfig(**resources), EngineConfig(**(engine or {})), cluster_gpus=gpus,
                     autoscaling=autoscaling, where=where)


def test_stated_bounds_are_the_pool_on_any_cluster():
    for gpus, autoscaling in ((0, AUTOSCALING), (8, None)):
        pool = plan({"use_gpu": True, "min_actors": 2, "max_actors": 6, "custom_resources": {"inference": 1}},
                    {"tensor_parallel_size": 2}, gpus=gpus, autoscaling=autoscaling)
        assert (pool.min_actors, pool.max_actors, pool.gpus_per_actor) == (2, 6, 2)
        assert pool.remote_args == {"num_cpus": 1, "num_gpus": 2, "resources": {"inference": 1}}


def test_on_an_autoscaling_cluster_the_pool_asks_for_its_actors_at_once_bounded_by_the_work():
    # Ray Data scales a pool within the resources up now and asks the autoscaler for none: the
    # pool's pending actors are what brings up their nodes.
    pool = plan({"use_gpu": True, "min_actors": 1, "max_actors": 3}, autoscaling=AUTOSCALING)
    assert pool.sizes(batches=24) == {"min_size": 3, "max_size": 3, "initial_size": 3}
    assert pool.sizes(batches=2) == {"min_size": 2, "max_size": 2, "initial_size": 2}  # no node for no work
    fixed = plan({"use_gpu": True, "min_actors": 1, "max_actors": 3}, gpus=4)
    assert fixed.sizes(batches=24) == {"min_size": 1, "max_size": 3, "initial_size": 1}  # Ray Data's own scaling


def test_an_autoscaling_cluster_without_a_stated_max_is_refused_with_the_key_to_set():
    # The GPUs up at submit (here none: cluster.yaml starts its GPU workers at zero) would have
    # made a pool of one.
    with pytest.raises(PoolError) as refused:
        plan({"use_gpu": True}, gpus=0, autoscaling=AUTOSCALING, where="eval")
    message = str(refused.value)
    assert "--set eval.resources.max_actors=N" in message and AUTOSCALING in message and "0 GPU(s)" in message
    with pytest.raises(PoolError, match=r"--set curate.resources.use_gpu=true"):
        plan({"max_actors": 4}, gpus=0, autoscaling=AUTOSCALING)


def test_a_fixed_cluster_sizes_an_unstated_max_from_its_gpus():
    pool = plan({}, {"tensor_parallel_size": 2}, gpus=8)  # use_gpu unset: the cluster has GPUs
    assert (pool.min_actors, pool.max_actors, pool.remote_args["num_gpus"]) == (1, 4, 2)
    assert "8 GPU(s) at submit" in pool.why
    cpu = plan({"min_actors": 3}, gpus=0)  # CPU only: one engine, the lower bound clipped to it
    assert (cpu.min_actors, cpu.max_actors, cpu.gpus_per_actor) == (1, 1, 0) and "num_gpus" not in cpu.remote_args
    with pytest.raises(PoolError, match="would wait forever"):  # GPUs asked of a cluster that has none
        plan({"use_gpu": True}, gpus=0)
    endpoint = plan({"use_gpu": True, "max_actors": 2}, {"backend": "openai"}, autoscaling=AUTOSCALING)
    assert "num_gpus" not in endpoint.remote_args  # an endpoint teacher computes on its server


def test_the_old_pool_keys_fail_naming_the_new_ones():
    with pytest.raises(ConfigError, match=r"resources.max_workers was renamed resources.max_actors"):
        load_config(REPO / "configs" / "tiny.yaml", ["curate.resources.max_workers=3"])
    with pytest.raises(ConfigError, match=r"resources.min_workers was renamed resources.min_actors"):
        load_config(REPO / "configs" / "tiny.yaml", ["eval.resources.min_workers=1"])
    with pytest.raises(ConfigError, match=r"min_actors \(4\) exceeds resources.max_actors \(2\)"):
        load_config(REPO / "configs" / "tiny.yaml", ["curate.resources.min_actors=4", "curate.resources.max_actors=2"])


def test_held_sums_each_lease_to_half_a_heartbeat_and_counts_the_most_at_once():
    leases = {
        "a": (1, 100.0, 160.0),  # ended long ago: 160 + 1 (half of a 2 s heartbeat) - 100 = 61 s
        "b": (2, 130.0, 199.5),  # still beating at 200: counted up to now, not past it
        "c": (1, 161.5, 170.0),  # a restart after a ended: never alive beside it
    }
    figures = held(leases, now=200.0, heartbeat_s=2.0)
    assert figures.accelerator_seconds == pytest.approx(61 + 2 * 70 + 9.5)
    assert figures.actor_seconds == pytest.approx(61 + 70 + 9.5)
    assert (figures.actors_started, figures.most_actors_at_once) == (3, 2)
    # A restart whose process starts within the half heartbeat a is counted past its last beat:
    # both held GPUs then (so both are summed), but they were never surely alive at once.
    leases["c"] = (1, 160.5, 170.0)
    figures = held(leases, now=200.0, heartbeat_s=2.0)
    assert figures.accelerator_seconds == pytest.approx(61 + 2 * 70 + 10.5)
    assert figures.most_actors_at_once == 2
    assert held({}, now=1.0).as_dict() == {"accelerator_seconds": 0, "actor_seconds": 0, "actors_started": 0,
                                           "most_actors_at_once": 0}


def test_the_vllm_check_names_what_a_release_lacks():
    class OldLLM:  # a release before LLM.enqueue: it generates, but cannot be fed while it runs
        def generate(self, prompts, sampling_params=None):
            return []

        def get_tokenizer(self):
            return None

    class Engine:
        def step(self): ...
        def add_request(self, *args): ...
        def abort_request(self, ids): ...
        def has_unfinished_requests(self): ...

    with pytest.raises(IncompatibleVLLM) as refused:
        check_vllm_api("0.8.5", {"LLM": OldLLM, "LLMEngine": Engine})
    assert str(refused.value).startswith(f"vLLM 0.8.5 lacks LLM.enqueue; this package needs vLLM >= {TESTED_VLLM}")
    OldLLM.enqueue = lambda self, prompts, sampling_params=None: []
    check_vllm_api("0.32.0", {"LLM": OldLLM, "LLMEngine": Engine})  # nothing missing: no error
    with pytest.raises(IncompatibleVLLM, match="lacks LLMEngine.step, LLMEngine.add_request"):
        check_vllm_api("9.9", {"LLM": OldLLM, "LLMEngine": object})


def test_request_ids_are_taken_apart_only_in_vllms_own_form():
    assert external_id("17-0a1b2c3d") == "17"  # LLM.enqueue's internal id: counter, "-", 8 hex characters
    assert external_id("stream-3") == "stream-3"  # any other form whole: delivery checks it (test_step_loop)
    assert external_id("17-XYZ") == "17-XYZ" and external_id("17") == "17"


def test_hf_token_is_forwarded_by_name_unless_the_job_sets_it(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf-from-the-shell")
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    assert driver_env_vars()["HF_TOKEN"] == "hf-from-the-shell"
    job = {"runtime_env": {"env_vars": {"HF_TOKEN": "hf-from-the-job"}}}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(job))  # Ray refuses a key set twice
    assert "HF_TOKEN" not in driver_env_vars()
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR")
    assert "HF_TOKEN" not in driver_env_vars()
