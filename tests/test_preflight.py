"""Every mistake named before compute starts (issue 31.2): each message here comes from the real
entry point or the real config loader, and none of them starts Ray (the fast tier's guard would
fail a test that did)."""

import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from advdistill.config import ConfigError, DatasetConfig, load_config
from advdistill.preflight import PreflightError, check_dataset, check_model

REPO = Path(__file__).resolve().parents[1]


def entry_point(name: str):
    return runpy.run_path(str(REPO / "ray_jobs" / f"{name}.py"))["main"]


def error_of(name: str, argv: list[str]) -> str:
    """The one line an entry point exits with (its SystemExit text)."""
    with pytest.raises(SystemExit) as done:
        entry_point(name)(argv)
    message = str(done.value.code)
    assert done.value.code not in (0, None) and "\n" not in message, message
    return message


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """No hub, and an empty local hub cache of this test's own."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.delenv("HF_DATASETS_CACHE", raising=False)
    return tmp_path / "hf" / "hub"


def cache_repo(cache: Path, repo_type: str, repo_id: str, filename: str) -> None:
    """A repository in huggingface_hub's cache layout, as a download leaves it."""
    repo = cache / f"{repo_type}s--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / filename).write_text("{}")


def test_a_misspelled_model_folder_is_named_with_the_folder_it_meant(tmp_path, offline_cache):
    message = error_of("distill", ["--set", "student=models/tiny-studnet", "--output", str(tmp_path / "run")])
    assert message == "error: student = models/tiny-studnet: no such folder (did you mean models/tiny-student?)"
    assert not (tmp_path / "run").exists()  # nothing was started, not even the output folder
    message = error_of("distill", ["--set", "extra_sft_students=[models/tiny-student, models/tiny-teachr]",
                                   "--output", str(tmp_path / "run")])
    assert message.startswith("error: extra_sft_students[1] = models/tiny-teachr: no such folder")
    assert message.endswith("(did you mean models/tiny-teacher?)")


def test_a_hub_id_offline_must_be_in_the_local_cache(offline_cache):
    cache_repo(offline_cache, "model", "Qwen/Qwen2.5-1.5B", "config.json")
    check_model("student", "Qwen/Qwen2.5-1.5B")  # cached: fine offline
    with pytest.raises(PreflightError) as err:
        check_model("teacher", "Qwen/Qwen2.5-1.5b-typo")
    assert str(err.value) == (f"teacher = Qwen/Qwen2.5-1.5b-typo: no such folder, and the hub is unreachable "
                              f"(HF_HUB_OFFLINE=1) and its cache ({offline_cache}) does not hold it "
                              f"(did you mean Qwen/Qwen2.5-1.5B?)")


def test_a_folder_that_is_not_a_model_is_named(tmp_path, offline_cache):
    (tmp_path / "notes").mkdir()
    with pytest.raises(PreflightError, match="notes: a folder without config.json, not a model folder"):
        check_model("teacher", str(tmp_path / "notes"))
    check_model("teacher", str(REPO / "models" / "tiny-teacher"))
    check_model("teacher", "models/tiny-teacher")  # relative to the repository from any working directory


def test_train_learning_rate_names_the_set_argument_and_the_field_it_meant(tmp_path):
    message = error_of("distill", ["--set", "train.learning_rate=1e-4", "--output", str(tmp_path)])
    assert message == ("error: --set train.learning_rate=1e-4: train has no field 'learning_rate'; "
                       "did you mean train.lr or train.method_lr?")
    # The same key in a YAML file blames the file; a bad value blames its --set, not the file.
    config = tmp_path / "mine.yaml"
    config.write_text(yaml.safe_dump({"train": {"learning_rate": 1e-4}}))
    with pytest.raises(ConfigError, match=rf"^{config}: train has no field 'learning_rate'; did you mean train.lr"):
        load_config(config)
    with pytest.raises(ConfigError, match=r"^--set curate.sampling.n=0: curate.sampling.n: Input should be greater "
                                          r"than or equal to 1 \(got 0\)$"):
        load_config(REPO / "configs" / "tiny.yaml", ["curate.sampling.n=0"])
    with pytest.raises(ConfigError, match=r"did you mean curate.sampling.temperature\?"):
        load_config(None, ["curate.sampling.temprature=1"])
    with pytest.raises(ConfigError, match=r"^--set lr=1: the config has no top-level field 'lr'; did you mean train.lr"):
        load_config(None, ["lr=1"])


def test_a_hub_dataset_offline_is_one_line_showing_the_path_alternative(tmp_path, offline_cache):
    message = error_of("curate", ["--dataset", "gsm8k", "--split", "train", "--output", str(tmp_path / "c")])
    assert message == ("error: curate.dataset: gsm8k train comes from the hub (openai/gsm8k), unreachable "
                       "(HF_HUB_OFFLINE=1) and not in the local cache; give a local JSONL or Parquet file with its "
                       "fields instead: --path FILE")
    message = error_of("distill", ["--set", "eval.test={name: gsm8k, split: test}", "--output", str(tmp_path / "d")])
    assert message.endswith("fields instead: --set eval.test.path=FILE")
    # Cached, or a local file, or a built-in generator: nothing to say.
    cache_repo(offline_cache, "dataset", "openai/gsm8k", "README.md")
    check_dataset("curate.dataset", DatasetConfig(name="gsm8k", split="train"))
    check_dataset("curate.dataset", DatasetConfig(name="gsm_plus", split="test", path="gsm_plus.jsonl"))
    check_dataset("curate.dataset", DatasetConfig(name="synthetic", split="train"))


def test_print_config_is_the_resolved_config_as_yaml(capsys):
    # evaluate.py's own required flags are not needed to print it.
    with pytest.raises(SystemExit) as done:
        entry_point("evaluate")(["--print-config", "--set", "train.lr=0.01"])
    assert done.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    expected = load_config(REPO / "configs" / "tiny.yaml", ["train.lr=0.01"]).model_dump(mode="json")
    assert printed == expected and printed["train"]["lr"] == 0.01 and printed["teacher"] == "models/tiny-teacher"


def test_help_shows_the_chosen_configs_values_beside_the_code_defaults(tmp_path, capsys):
    config = tmp_path / "mine.yaml"
    config.write_text(yaml.safe_dump({"name": "mine", "train": {"epochs": 3}}))
    with pytest.raises(SystemExit) as done:
        entry_point("train")(["--config", str(config), "--set", "train.lr=0.01", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert f"values from {config} + --set train.lr=0.01, code defaults beside those it changes" in out
    assert "  train.lr = 0.01  (float; code default 5e-06)\n" in out
    assert "  train.epochs = 3  (int; code default 4)\n" in out
    assert "  train.weight_decay = 0.01  (float)\n" in out  # unchanged: no default beside it


def test_evaluate_with_a_missing_model_is_one_line_from_the_real_script(tmp_path):
    """The command a user types, as a process: one line on stderr, a failing exit code, no
    traceback (it was 87 lines)."""
    done = subprocess.run([sys.executable, str(REPO / "ray_jobs" / "evaluate.py"), "--model", "/no/such/folder",
                           "--dataset", "synthetic", "--split", "test", "--output", str(tmp_path / "eval")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode != 0
    assert done.stderr == "error: --model = /no/such/folder: no such folder\n"
    assert not (tmp_path / "eval").exists()


def test_a_served_model_that_is_not_there_is_named_before_any_replica_starts():
    from advdistill.serve.app import build_app  # builds the application only: no Ray, no replica

    with pytest.raises(ValueError) as err:
        build_app({"config": "configs/tiny.yaml", "models": [{"name": "student", "path": "models/tiny-studnet"}]})
    assert str(err.value) == (f"model 'student': 'models/tiny-studnet' is not a model folder (with a config.json) "
                              f"inside the checkpoint root {REPO}, nor an absolute path to one (did you mean models/tiny-student?)")
