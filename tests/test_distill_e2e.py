"""The whole method, submitted with the real `ray job submit` CLI to the suite's `ray start`
cluster: every artefact appears, and a rerun skips the finished stages."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

SHORT = [
    "curate.dataset.limit=24", "train.epochs=1", "train.groups_per_step=2", "train.checkpoint_every=1000",
    "eval.test.limit=8", "eval.ood=[{name: synthetic, split: ood, limit: 10}]",
]
STAGES = ["curate", "train-advdistill", "train-sft", "eval-teacher", "eval-base", "eval-sft", "eval-advdistill"]


def submit(cluster, output: Path) -> str:
    ray = str(Path(sys.executable).parent / "ray")
    cmd = [ray, "job", "submit", "--address", cluster.dashboard, "--working-dir", str(REPO),
           "--runtime-env-json", json.dumps({"excludes": [".venv", "runs", ".git", "*.egg-info"]}),
           "--", "python", "ray_jobs/distill.py", "--output", str(output)]
    for override in SHORT:  # `ray job submit` quotes each entrypoint argument itself
        cmd += ["--set", override]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return done.stdout


def list_kept_ids(output: Path) -> list[str]:
    import pyarrow.parquet as pq

    return [i for f in (output / "curate" / "groups").glob("*.parquet") for i in pq.read_table(f, columns=["id"]).column("id").to_pylist()]


@pytest.fixture(scope="module")
def run(ray_cluster, tmp_path_factory):
    output = tmp_path_factory.mktemp("distill") / "run"
    return output, submit(ray_cluster, output)


def test_every_artefact_is_produced(run):
    output, log = run
    assert json.loads((output / "curate" / "summary.json").read_text())["prompts_read"] == 24
    assert list((output / "curate" / "groups").glob("*.parquet"))
    for mode in ("advdistill", "sft"):
        final = output / f"train-{mode}" / "final"
        assert (final / "model.safetensors").is_file() and (final / "tokenizer.json").is_file()
        assert (output / f"train-{mode}" / "metrics.jsonl").read_text().strip()
    for model in ("teacher", "base", "sft", "advdistill"):
        for split in ("synthetic-test", "synthetic-ood"):
            metrics = json.loads((output / "eval" / f"{model}-{split}" / "metrics.json").read_text())
            assert metrics["n"] == (8 if split == "synthetic-test" else 10)
            assert (output / "eval" / f"{model}-{split}" / "predictions.jsonl").is_file()
    report = (output / "report" / "report.md").read_text()
    for needle in ("Accuracy (paper Table 1 shape)", "Student AdvDistill", "synthetic-ood*", "verbosity", "template adherence",
                   "Cost per stage", "advantages.png", "## Training", "groups per step", "validation groups",
                   "## Paired differences", "Student AdvDistill − Student SFT", "Student SFT − Student base",
                   "synthetic-test (n = 8 items"):
        assert needle in report
    assert {p.name for p in (output / "report").glob("*.png")} >= {
        "advantages.png", "correct-per-group.png", "verbosity-synthetic-test.png", "degeneracy-synthetic-ood.png",
        "template-synthetic-test.png", "training-loss.png"}
    manifest = json.loads((output / "run.json").read_text())
    assert list(manifest["stages"]) == STAGES
    assert "| Teacher |" in log  # the table is printed at the end of the job
    result = json.loads((output / "train-advdistill" / "result.json").read_text())
    assert (result["groups_per_step"], result["val_fraction"]) == (2, 0.05)
    assert result["train_groups"] + result["val_groups"] == len(list_kept_ids(output))


def test_rerun_skips_finished_stages(run, ray_cluster):
    output, _ = run
    before = (output / "train-advdistill" / "final" / "model.safetensors").stat().st_mtime
    log = submit(ray_cluster, output)
    for stage in STAGES:
        assert f"[distill] {stage}: done earlier, skipped" in log
    assert (output / "train-advdistill" / "final" / "model.safetensors").stat().st_mtime == before
    assert all(s.get("skipped") for s in json.loads((output / "run.json").read_text())["stages"].values())
    _, parents, stages = mlflow_runs(output)  # a rerun logs into the same MLflow runs
    assert len(parents) == 1 and sorted(stages) == sorted(STAGES)


def mlflow_runs(output: Path):
    import os

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for it to read a file store
    from mlflow.tracking import MlflowClient

    client = MlflowClient((output / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("advdistill")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    stages = {r.info.run_name: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    return client, parents, stages


def test_the_run_is_tracked_in_mlflow_with_a_nested_run_per_stage(run):
    """MLflow's own client reads the run back from the file store in the run folder: one run for
    the distill.py run (config, report), a nested one per stage with its figures, and every
    optimizer step of each training from rank 0."""
    output, log = run
    client, parents, stages = mlflow_runs(output)
    assert len(parents) == 1 and sorted(stages) == sorted(STAGES)
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.params["train.groups_per_step"] == "2"
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id and r.info.status == "FINISHED"
               for r in stages.values())
    assert "report" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    summary = json.loads((output / "curate" / "summary.json").read_text())
    assert stages["curate"].data.metrics["kept"] == summary["kept"]
    for mode in ("advdistill", "sft"):
        steps = [json.loads(line) for line in (output / f"train-{mode}" / "metrics.jsonl").read_text().splitlines()]
        history = client.get_metric_history(stages[f"train-{mode}"].info.run_id, "loss")
        assert [(m.step, m.value) for m in history] == [(s["step"], s["loss"]) for s in steps]
        for name in ("lr", "grad_norm", "tokens_per_s"):
            assert len(client.get_metric_history(stages[f"train-{mode}"].info.run_id, name)) == len(steps)
        assert stages[f"train-{mode}"].data.params["final_checkpoint"].endswith(f"train-{mode}/final")
    assert len(client.get_metric_history(stages["train-advdistill"].info.run_id, "weight_entropy")) == len(steps)
    metrics = json.loads((output / "eval" / "teacher-synthetic-test" / "metrics.json").read_text())
    assert stages["eval-teacher"].data.metrics["synthetic-test/accuracy"] == metrics["accuracy"]
    assert f"tracked in MLflow: {(output / 'mlruns').as_uri()}" in log


def test_the_run_publishes_cards_and_names_models_as_configured(run):
    """Issue 31.3: each final/ has a model card the Hub reads (base model, license, the run's
    evaluation results), curate/ a dataset card with which `datasets` loads the kept groups, and
    the report names the models as configured, not by the job's unpacked working directory."""
    from datasets import load_dataset
    from huggingface_hub import DatasetCard, ModelCard

    output, _ = run
    report = (output / "report" / "report.md").read_text()
    assert "Teacher `models/tiny-teacher`, student `models/tiny-student`" in report
    manifest = json.loads((output / "run.json").read_text())
    assert manifest["models"]["teacher"]["name"] == "models/tiny-teacher"
    for mode in ("advdistill", "sft"):
        card = ModelCard.load(output / f"train-{mode}" / "final" / "README.md")
        assert card.data.license == "apache-2.0" and card.data.library_name == "transformers"
        results = {r.dataset_name: r.metric_value for r in card.data.eval_results}
        for split in ("synthetic-test", "synthetic-ood"):
            accuracy = json.loads((output / "eval" / f"{mode}-{split}" / "metrics.json").read_text())["accuracy"]
            assert results[split] == round(100 * accuracy, 2)
        assert f"| **{mode}** (this model) |" in card.text and "| base (`models/tiny-student`) |" in card.text
        assert "`models/tiny-student` fine-tuned with" in card.text and "weights exported in `float32`" in card.text
        assert f"method: {mode}" in card.text  # the resolved config is in the card
    dataset = DatasetCard.load(output / "curate" / "README.md")
    assert dataset.data.license == "apache-2.0" and "teacher `models/tiny-teacher`" in dataset.text
    groups = load_dataset(str(output / "curate"), split="train")  # the card's configs: groups/ is the train split
    assert sorted(groups["id"]) == sorted(list_kept_ids(output))
