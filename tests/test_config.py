"""Typed configs: SPEC defaults, YAML loading, overrides, errors, every shipped config valid."""

from pathlib import Path

import pytest

from advdistill.cli import config_fields, config_help
from advdistill.local_ray import RAY_ENV_DEFAULTS, driver_env_vars
from advdistill.config import ConfigError, ExperimentConfig, load_config, parse_override, with_overrides

REPO = Path(__file__).resolve().parents[1]


def test_defaults_are_the_spec_values():
    c = ExperimentConfig()
    assert (c.reward.w_cos, c.reward.w_fmt, c.reward.max_len) == (2.0, 1.0, 2048)
    assert (c.reward.correct_start, c.reward.correct_end, c.reward.wrong_start, c.reward.wrong_end) == (1.0, 0.5, -0.5, -1.0)
    assert (c.advantage.eps, c.advantage.bessel) == (1e-4, True)
    assert (c.train.loss.tau, c.train.loss.lam, c.train.loss.delta) == (0.5, 0.5, 1e-5)
    s = c.curate.sampling
    assert (s.n, s.temperature, s.top_p, s.max_tokens) == (8, 0.9, 1.0, 2048)
    t = c.train
    assert (t.lr, t.weight_decay, t.epochs, t.warmup_ratio, t.max_grad_norm, t.groups_per_step, t.max_seq_len, t.val_every) == (
        5e-6, 0.01, 4, 0.05, 0.5, 16, 2048, 400)
    assert t.val_fraction == 0.05  # a stated choice (SPEC §6), reported with every run
    assert c.prompt.few_shot == 4 and c.eval.temperature == 0.0 and c.eval.max_tokens == 2048
    assert c.teacher == "Qwen/Qwen2.5-7B" and c.student == "Qwen/Qwen2.5-1.5B"


def test_overrides_parse_yaml_values():
    c = load_config(None, ["train.lr=1e-3", "train.method=sft", "curate.dataset.limit=5", "train.responses_per_group=null"])
    assert c.train.lr == 1e-3 and c.train.method == "sft" and c.curate.dataset.limit == 5
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["train.lrr=1"], "lrr"),
        (["train.method=rl"], "method"),
        (["curate.sampling.n=0"], "n"),
        (["reward.max_len=100"], "L_max"),
        (["nonsense"], "dotted.key=value"),
        (["train.lr.x=1"], "train.lr"),
        (["train.lr=1e-3", "train.lr.x=1"], "not a section"),
        (["train.grad_accum=2"], "replaced by train.groups_per_step"),
    ],
)
def test_bad_overrides_name_the_field(overrides, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(None, overrides)


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["train.mode=sft"], "train.mode was renamed train.method"),
        (["curate.engine.engine=vllm"], "engine.engine was renamed engine.backend"),
        (["eval.engine.engine=vllm"], "engine.engine was renamed engine.backend"),
        (["train.resources.custom={train: 1}"], "resources.custom was renamed resources.custom_resources"),
        (["serve.custom={serve: 1}"], "serve.custom was renamed serve.custom_resources"),
        (["serve.max_tokens_limit=512"], "serve.max_tokens_limit was renamed serve.max_request_tokens"),
        (["sft_lr=1e-3"], "sft_lr was replaced by train.method_lr"),
        (["train.fail_at_step=3"], "ADVDISTILL_FAIL_AT_STEP"),
    ],
)
def test_old_names_fail_naming_the_new_one(overrides, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(None, overrides)


def test_a_method_trains_at_its_own_rate_where_it_has_one():
    c = load_config(None, ["train.lr=3e-4", "train.method_lr={sft: 1e-3}"])
    assert c.train.learning_rate == 3e-4  # advdistill: no rate of its own
    assert with_overrides(c, {"train.method": "sft"}).train.learning_rate == 1e-3
    with pytest.raises(ConfigError, match="unknown training method 'rl'"):
        load_config(None, ["train.method_lr={rl: 1e-3}"])
    with pytest.raises(ConfigError, match="method_lr"):
        load_config(None, ["train.method_lr={sft: 0}"])


def test_reward_max_len_follows_the_generation_limit_unless_set():
    c = load_config(None, ["curate.sampling.max_tokens=48"])
    assert c.reward.max_len == 48
    assert with_overrides(c, {"curate.sampling.max_tokens": 64}).reward.max_len == 64  # derived again
    fixed = load_config(None, ["curate.sampling.max_tokens=48", "reward.max_len=48"])
    with pytest.raises(ConfigError, match="L_max"):
        with_overrides(fixed, {"curate.sampling.max_tokens": 64})  # a value set stays checked


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_tiny_config_loads():
    c = load_config(REPO / "configs" / "tiny.yaml")
    assert c.teacher == "models/tiny-teacher" and c.curate.dataset.name == "synthetic"
    assert c.reward.max_len == c.curate.sampling.max_tokens


def test_groups_per_step_is_one_value_whatever_the_worker_count():
    """The old default took workers x grad_accum = 2 x 16 = 32 groups per step (paper: 16)."""
    for workers in (1, 2, 8):
        c = load_config(None, [f"train.num_workers={workers}"])
        assert c.train.groups_per_step == 16


@pytest.mark.parametrize("groups, workers, waste", [(16, 32, "16 of them zero-weight padding (50%"),
                                                    (16, 3, "2 of them zero-weight padding (11%"),
                                                    (3, 2, "1 of them zero-weight padding (25%")])
def test_a_step_that_leaves_workers_idle_is_refused_with_its_waste(groups, workers, waste):
    """FSDP makes every worker run as many passes as the busiest: 16 groups on 32 GPUs would pad
    half the passes. The config refuses it, stating the waste, before any GPU is held."""
    with pytest.raises(ConfigError, match=r"groups_per_step .* not a multiple of train.num_workers") as err:
        load_config(None, [f"train.groups_per_step={groups}", f"train.num_workers={workers}"])
    assert waste in str(err.value)
    cfg = load_config(None, [f"train.groups_per_step={2 * workers}", f"train.num_workers={workers}"])
    with pytest.raises(ConfigError, match=waste.replace("(", r"\(")):
        with_overrides(cfg, {"train.groups_per_step": groups})


@pytest.mark.parametrize(
    "overrides, needle",
    [
        ({"train.method": "rl"}, "unknown training method"),
        ({"train.lr": -1}, "train.lr"),
        ({"reward.max_len": 100}, "L_max"),
        ({"curate.progress_every_s": 0}, "progress_every_s"),
        ({"eval.test.split": "dev"}, "splits"),
        ({"train.lrr": 1}, "lrr"),
    ],
)
def test_code_overrides_are_validated_like_loaded_ones(overrides, needle):
    """`model_copy(update=...)` accepted all of these; the helper the code uses does not."""
    with pytest.raises(ConfigError, match=needle):
        with_overrides(load_config(REPO / "configs" / "tiny.yaml"), overrides)


def test_with_overrides_returns_a_changed_copy():
    base = load_config(REPO / "configs" / "tiny.yaml")
    sft = with_overrides(base, {"train.method": "sft", "train.lr": 1e-4, "eval.ood": []})
    assert (sft.train.method, sft.train.lr, sft.eval.ood) == ("sft", 1e-4, [])
    assert (base.train.method, base.train.lr, len(base.eval.ood)) == ("advdistill", 3e-4, 1)
    assert with_overrides(base, {}) == base


def test_every_field_says_what_it_is_in_help():
    fields = list(config_fields(ExperimentConfig))
    assert len(fields) > 80 and all(description for *_, description in fields)
    text = config_help()
    assert "  train.loss.chunk_size = 1024  (int)\n      tokens per chunk" in text
    assert "  train.method = 'advdistill'  (str)\n      training method" in text


def test_driver_env_leaves_the_keys_a_submitted_job_sets_to_the_job(monkeypatch):
    """Ray refuses to start a driver whose ray.init runtime env repeats a key of the job's own
    (`ray job submit --runtime-env-json`): the job's value wins, the other defaults still apply."""
    import json

    first, second = list(RAY_ENV_DEFAULTS)
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    assert set(driver_env_vars()) == {first, second}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": {"env_vars": {first: "5"}}}))
    assert set(driver_env_vars()) == {second}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": None}))
    assert set(driver_env_vars()) == {first, second}


def test_the_old_curate_entry_point_says_it_is_deprecated_and_runs_curate(capsys):
    """`ray_jobs/generate.py` stays one release: one line on stderr, then curate.py's own main."""
    import runpy

    generate = runpy.run_path(str(REPO / "ray_jobs" / "generate.py"))
    with pytest.raises(SystemExit) as done:
        generate["main"](["--help"])
    assert done.value.code == 0
    out, err = capsys.readouterr()
    assert err.splitlines() == ["ray_jobs/generate.py is deprecated and will be removed: use ray_jobs/curate.py "
                                "(same arguments)"]
    assert "Curate: the teacher samples K responses per prompt" in out and "curate.dataset.limit" in out
