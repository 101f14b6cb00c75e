"""The run folder (advdistill.run.folders): each stage's output object says where its files are and
whether the stage finished, which is what a rerun skips on."""

import json

from advdistill.curate.store import CurateOutput
from advdistill.evaluation.evaluator import EvalOutput
from advdistill.run.folders import RunLayout
from advdistill.train.trainer import TrainOutput


def test_paths_of_a_run(tmp_path):
    run = RunLayout(tmp_path)
    assert (run.config, run.manifest, run.report) == (tmp_path / "config.yaml", tmp_path / "run.json", tmp_path / "report")
    assert run.curate.groups == CurateOutput(tmp_path / "curate").groups == tmp_path / "curate" / "groups"
    assert run.train("sft@Qwen2.5-3B").final == TrainOutput(tmp_path / "train-sft@Qwen2.5-3B").final
    assert run.eval("base", "synthetic-ood").metrics == tmp_path / "eval" / "base-synthetic-ood" / "metrics.json"
    for name in ("sft", "advdistill"):
        run.train(name).folder.mkdir()
    assert list(run.trainings()) == ["advdistill", "sft"]


def test_curation_is_complete_when_every_prompt_read_was_written(tmp_path):
    out = CurateOutput(tmp_path)
    assert not out.is_complete()
    out.summary.write_text(json.dumps({"prompts_read": 32, "prompts_written": 20}))
    assert not out.is_complete()  # a run killed part way
    out.summary.write_text(json.dumps({"prompts_read": 32, "prompts_written": 32}))
    assert out.is_complete()


def test_training_and_evaluation_are_complete_when_their_last_files_exist(tmp_path):
    train = TrainOutput(tmp_path / "train")
    train.final.mkdir(parents=True)
    assert not train.is_complete()  # the export is written before result.json
    train.result.write_text("{}")
    assert train.is_complete()
    evaluation = EvalOutput(tmp_path / "eval")
    assert not evaluation.is_complete()
    evaluation.write({"n": 1}, [{"id": "a"}])
    assert evaluation.is_complete() and evaluation.predictions.read_text() == '{"id": "a"}\n'
