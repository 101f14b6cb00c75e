"""Every shipped experiment config and the cluster config validate offline."""

from pathlib import Path

import pytest
import yaml

from advdistill.config import load_config
from advdistill.tasks import get_task

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def test_the_expected_configs_exist():
    assert {p.name for p in CONFIGS} >= {"tiny.yaml", "paper-gsm8k.yaml", "paper-open-s1.yaml", "paper-mmlu-pro.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_validates_and_references_loadable_data_and_models(path):
    cfg = load_config(path)
    for ds in [cfg.curate.dataset, cfg.eval.test, *cfg.eval.ood]:
        assert ds.split in get_task(ds.name).splits, (ds.name, ds.split)
    for model in [cfg.teacher, cfg.student, *cfg.extra_sft_students]:
        if model.startswith("models/"):  # the embedded models ship in the repository
            assert (REPO / model / "config.json").is_file(), model
        else:  # a hub id
            assert model.count("/") == 1 and not model.startswith((".", "/")), model
    assert cfg.reward.max_len == cfg.curate.sampling.max_tokens
    assert cfg.train.num_workers >= 1 and cfg.train.groups_per_step >= 1


@pytest.mark.parametrize("name", ["paper-gsm8k", "paper-open-s1", "paper-mmlu-pro"])
def test_paper_configs_follow_the_paper(name):
    cfg = load_config(REPO / "configs" / f"{name}.yaml")
    assert (cfg.teacher, cfg.student, cfg.extra_sft_students) == ("Qwen/Qwen2.5-7B", "Qwen/Qwen2.5-1.5B", ["Qwen/Qwen2.5-3B"])
    s, t = cfg.curate.sampling, cfg.train
    assert (s.n, s.temperature, s.top_p, s.max_tokens, cfg.curate.engine.max_model_len) == (8, 0.9, 1.0, 2048, 4096)
    assert (t.lr, t.weight_decay, t.epochs, t.warmup_ratio, t.max_grad_norm, t.max_seq_len, t.val_every) == (
        5e-6, 0.01, 4, 0.05, 0.5, 2048, 400)
    assert t.groups_per_step == 16  # micro-batch 1 group x accumulation 16 (Appendix B), any worker count
    assert t.val_fraction == 0.05
    # Both are stated in the file itself, not left to a default nobody sees.
    stated = yaml.safe_load((REPO / "configs" / f"{name}.yaml").read_text())["train"]
    assert {"groups_per_step", "val_fraction"} <= stated.keys()
    assert cfg.curate.resources.use_gpu and t.resources.use_gpu and cfg.eval.resources.use_gpu and t.bf16
    # The generation pools are stated, as an autoscaling cluster requires (generation/pool.py):
    # one engine per GPU of cluster.yaml's default node, which also holds the 8 Train workers.
    gpus_per_node = yaml.safe_load((REPO / "cluster.yaml").read_text())["available_node_types"]["gpu_8x_h100"][
        "resources"]["GPU"]
    for stage in (cfg.curate, cfg.eval):
        assert (stage.resources.min_actors, stage.resources.max_actors) == (1, gpus_per_node)
        assert stage.resources.max_actors * stage.engine.tensor_parallel_size == gpus_per_node
    assert t.num_workers == gpus_per_node
    assert t.activation_checkpointing  # K = 8 x 2,048 tokens of a 1.5B/3B student (docs/memory.md)
    ood = {"paper-gsm8k": ["gsm_plus"], "paper-open-s1": ["open_rs"], "paper-mmlu-pro": []}[name]
    assert [d.name for d in cfg.eval.ood] == ood


def test_cluster_yaml_validates_against_the_autoscaler_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((REPO / "cluster.yaml").read_text())
    validate_config(prepare_config(raw))  # what `ray up` runs before touching a cloud
    workers = [t for name, t in raw["available_node_types"].items() if name != raw["head_node_type"]]
    assert raw["provider"]["type"] == "aws" and workers
    # Every worker type starts at zero; the default one may grow, the per-stage option is off.
    assert all(t["min_workers"] == 0 and 0 <= t["max_workers"] <= raw["max_workers"] for t in workers)
    assert [t["resources"].get("GPU") for t in workers if t["max_workers"] > 0] == [8]
    assert raw["idle_timeout_minutes"] > 0 and any("InstanceMarketOptions" in t["node_config"] for t in workers)
    assert raw["docker"]["image"] and not any("pip install" in c for c in raw["setup_commands"])
    start = " ".join(raw["head_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in start and "disabled" not in start
    assert "--dashboard-host=$(hostname -I" in start and "0.0.0.0" not in start
    assert "--http-host=$(hostname -I" in start
