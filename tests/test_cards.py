"""Cards for what a run publishes (advdistill.cards, issue 31.3), from the files a training or a
curation writes; the whole run's cards are checked on a real run in test_distill_e2e.py."""

import json
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from advdistill.cards import configured_name, model_card, write_model_card
from advdistill.config import dump_config, load_config

REPO = Path(__file__).resolve().parents[1]


def training_folder(tmp_path: Path, student: str, **result) -> Path:
    """A train-NAME folder as ray_jobs/train.py leaves it: config.yaml, result.json, final/."""
    folder = tmp_path / "train-sft"
    (folder / "final").mkdir(parents=True)
    cfg = load_config(REPO / "configs" / "tiny.yaml", ["train.method=sft", f"student={student}"])
    (folder / "config.yaml").write_text(dump_config(cfg))
    (folder / "result.json").write_text(json.dumps({"student": student, "export_dtype": "bfloat16", "train_groups": 90,
                                                    "val_groups": 5, "val_loss": 0.25, **result}))
    return folder


def test_a_training_of_an_embedded_student_gets_a_card_with_its_settings(tmp_path):
    folder = training_folder(tmp_path, str(REPO / "models" / "tiny-student"))
    card = ModelCard.load(write_model_card(folder))  # the Hub's own parser reads it back
    # A model this repository built: the repository's license; a local base is no Hub base_model.
    assert card.data.license == "apache-2.0" and card.data.base_model is None
    assert card.data.pipeline_tag == "text-generation" and "sft" in card.data.tags
    assert "`models/tiny-student` fine-tuned with supervised fine-tuning" in card.text
    assert "weights exported in `bfloat16`" in card.text and "trained on 90 groups, 5 held out" in card.text
    assert "learning rate 0.001" in card.text  # the method's own rate (configs/tiny.yaml method_lr)
    assert "Not evaluated with this training" in card.text and "```yaml\nname: tiny" in card.text
    before = (folder / "final" / "README.md").stat().st_mtime_ns
    write_model_card(folder)
    assert (folder / "final" / "README.md").stat().st_mtime_ns == before  # the same text is not rewritten


def test_a_hub_student_is_the_base_model_and_an_unknown_license_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    folder = training_folder(tmp_path, "Qwen/Qwen2.5-1.5B")
    evaluations = {"sft": {"gsm8k-test": {"accuracy": 0.7286, "low": 0.70, "high": 0.75, "n": 1319, "clusters": 1319}},
                   "base": {"gsm8k-test": {"accuracy": 0.4246, "low": 0.40, "high": 0.45, "n": 1319, "clusters": 1319}}}
    card = ModelCard(model_card(folder, evaluations, name="sft", labels={"base": "base (`Qwen/Qwen2.5-1.5B`)"}))
    assert card.data.base_model == "Qwen/Qwen2.5-1.5B" and card.data.base_model_relation == "finetune"
    assert card.data.license == "other" and "Set `license` in the metadata above" in card.text
    [result] = card.data.eval_results
    assert (result.dataset_name, result.dataset_split, result.metric_type, result.metric_value) == (
        "gsm8k-test", "test", "accuracy", 72.86)
    assert "| **sft** (this model) | 72.9 [70.0, 75.0] (n = 1319) |" in card.text
    assert "| base (`Qwen/Qwen2.5-1.5B`) | 42.5 [40.0, 45.0] (n = 1319) |" in card.text


@pytest.mark.parametrize("where", ["job", "repository"])
def test_models_are_named_as_configured_wherever_the_job_unpacked_them(tmp_path, monkeypatch, where):
    """Under `ray job submit` the working directory is the job's unpacked copy of the repository;
    a model folder found there is named as the config named it."""
    if where == "job":
        job = tmp_path / "_ray_pkg_0123"
        (job / "models" / "tiny-student").mkdir(parents=True)
        monkeypatch.chdir(job)
        assert configured_name(str(job / "models" / "tiny-student")) == "models/tiny-student"
    else:
        monkeypatch.chdir(tmp_path)
        assert configured_name(str(REPO / "models" / "tiny-student")) == "models/tiny-student"
    assert configured_name("Qwen/Qwen2.5-1.5B") == "Qwen/Qwen2.5-1.5B"
    assert configured_name("s3://bucket/models/x") == "s3://bucket/models/x"
