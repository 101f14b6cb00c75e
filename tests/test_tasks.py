"""The task registry: a new task is one `register_task` entry. A toy "parity" task (multiple
choice: is n even or odd?), registered here and nowhere else, goes through the config, loading a
local JSONL file (with a bad row quarantined), prompt building, curation scoring and evaluation
scoring with its breakdown field, and that field in the API's response models."""

import json

import pytest
from pydantic import ValidationError

from advdistill import tasks
from advdistill.config import ConfigError, DatasetConfig, load_config, with_overrides
from advdistill.curate.stage import score_curated
from advdistill.data.loaders import load_records
from advdistill.evaluation.evaluator import score_prediction
from advdistill.evaluation.metrics import summarize_predictions
from advdistill.prompts import build_prompt, template_response
from advdistill.schema import Prediction, columns, prediction_schema, to_arrow
from advdistill.tasks import BadRow, TaskSpec, get_task, register_task, text_field


def parity_record(row: dict, split: str, index: int) -> dict:
    n = row.get("n")
    if not isinstance(n, int):
        raise BadRow("field 'n' must be an integer")
    return {"id": f"parity-{n}", "task": "parity", "question": f"Is {n} even or odd?", "reference": "AB"[n % 2],
            "choices": ["even", "odd"], "meta": {"magnitude": "small" if n < 10 else "large",
                                                 "source": text_field(row, "source")}}


PARITY = TaskSpec("parity", "multiple_choice", parity_record, {"test": "test"}, group_by="magnitude")


@pytest.fixture()
def parity():
    spec = register_task(PARITY)
    yield spec
    tasks.TASKS.remove(spec.name)  # the rest of the suite runs without the toy task


@pytest.fixture()
def parity_file(tmp_path):
    rows = [{"n": n, "source": "toy"} for n in (3, 4, 12, 27)] + [{"n": "five", "source": "toy"}]
    path = tmp_path / "parity.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_the_config_and_loading_know_the_task(parity, parity_file):
    cfg = load_config(None, ["eval.test.name=parity", "eval.test.split=test", f"eval.test.path={parity_file}"])
    loaded = load_records(cfg.eval.test)
    assert [r["id"] for r in loaded.records] == ["parity-3", "parity-4", "parity-12", "parity-27"]
    assert [r["reference"] for r in loaded.records] == ["B", "A", "A", "B"]
    assert [q["reason"] for q in loaded.quarantined] == ["field 'n' must be an integer"]
    with pytest.raises(ConfigError, match="splits"):
        with_overrides(cfg, {"eval.test.split": "train"})


def test_prompts_list_the_options_and_use_multiple_choice_exemplars(parity, parity_file, tiny_tokenizer):
    record = load_records(DatasetConfig(name="parity", split="test", path=parity_file)).records[0]
    prompt = build_prompt(tiny_tokenizer, record, few_shot=1)
    assert "Is 3 even or odd?\n\nOptions:\nA. even\nB. odd" in prompt
    assert "J. " in prompt  # the exemplar is a (ten-option) multiple-choice one


def test_curation_and_evaluation_score_it_as_multiple_choice(parity, parity_file, tiny_cfg):
    records = load_records(DatasetConfig(name="parity", split="test", path=parity_file)).records
    responses = [[template_response("n is odd", "B"), template_response("n is even", "A"), "The answer is (B)"]
                 for _ in records]
    groups = [score_curated({**r, "prompt": "", "responses": rs, "token_lengths": [9, 9, 9],
                             "finish_reasons": ["stop", "stop", "length"]}, tiny_cfg) for r, rs in zip(records, responses)]
    odd = [r["reference"] == "B" for r in records]
    # the cut third response is incorrect whatever it says
    assert [g["correct"] for g in groups] == [[o, not o, False] for o in odd]
    assert all(g["keep"] for g in groups)

    predictions = [score_prediction({**r, "prompt": "", "responses": [template_response("odd", "B")],
                                     "token_lengths": [9], "finish_reasons": ["stop"]}) for r in records]
    assert [p["extracted"] for p in predictions] == ["B"] * 4 and [p["correct"] for p in predictions] == odd
    assert [p["magnitude"] for p in predictions] == ["small", "small", "large", "large"]
    # a task that names no clusters: every item is its own
    assert [p["cluster"] for p in predictions] == [r["id"] for r in records]
    metrics = summarize_predictions(predictions, group_by=get_task("parity").group_by)
    assert {k: m["n"] for k, m in metrics["by_magnitude"].items()} == {"small": 2, "large": 2}
    # its breakdown field is a column of the predictions table
    assert prediction_schema().names == [*columns(Prediction), "perturbation_type", "category", "magnitude"]
    assert to_arrow(predictions, prediction_schema()).num_rows == 4


def test_its_breakdown_field_reaches_the_apis_response_models(parity, parity_file):
    """/evaluate's answer and /openapi.json carry `by_magnitude` and each item's `magnitude`,
    typed, with no edit to the API's schemas (validated through the response models, no Serve)."""
    from advdistill.serve.schemas import response_models

    records = load_records(DatasetConfig(name="parity", split="test", path=parity_file)).records
    predictions = [score_prediction({**r, "prompt": "", "responses": [template_response("odd", "B")],
                                     "token_lengths": [9], "finish_reasons": ["stop"]}) for r in records]
    metrics = summarize_predictions(predictions, group_by="magnitude")
    models = response_models()
    with pytest.raises(ValidationError, match="by_magnitude.small.accuracy"):
        models.EvaluateMetrics.model_validate({**metrics, "by_magnitude": {"small": {**metrics, "accuracy": "high"}}})
    answer = models.EvaluateResponse.model_validate({"model": "tiny-student", "few_shot": 0, "metrics": metrics,
                                                     "results": predictions}).model_dump()
    assert answer["metrics"]["by_magnitude"] == metrics["by_magnitude"]
    assert [r["magnitude"] for r in answer["results"]] == ["small", "small", "large", "large"]
    job = models.EvaluationJob.model_validate({"id": "j", "model": "tiny-student", "status": "done", "done": 4,
                                               "total": 4, "result": answer, "created_at": 0.0}).model_dump()
    assert job["result"] == answer
    schema = models.EvaluateResponse.model_json_schema(mode="serialization")["$defs"]
    assert schema["EvaluateMetrics"]["properties"]["by_magnitude"]["anyOf"][0] == {
        "type": "object", "additionalProperties": {"$ref": "#/$defs/Metrics"}}
    assert schema["ItemResult"]["properties"]["magnitude"]["anyOf"] == [{"type": "string"}, {"type": "null"}]
    assert "parity" in schema["ItemResult"]["properties"]["magnitude"]["description"]


def test_built_in_tasks_and_unknown_names():
    assert tasks.task_names() == ("gsm8k", "gsm_plus", "open_s1", "open_rs", "mmlu_pro", "synthetic",
                                  "relations_v1", "relations_v2", "relations_v3")
    assert [n for n in tasks.task_names() if get_task(n).multiple_choice] == ["mmlu_pro"]
    assert [n for n in tasks.task_names() if get_task(n).reference_optional] == ["gsm_plus"]
    assert tasks.breakdown_fields() == ("perturbation_type", "category")
    from advdistill.serve.schemas import response_models

    assert "magnitude" not in response_models().ItemResult.model_fields  # the toy task is gone again
    with pytest.raises(ValueError, match="unknown task 'parity'"):
        get_task("parity")
    with pytest.raises(ConfigError, match="unknown task"):
        load_config(None, ["curate.dataset.name=parity"])
    with pytest.raises(ValueError, match="already registered"):
        register_task(get_task("gsm8k"))


def test_each_record_names_the_cluster_it_was_drawn_in(shared_data):
    """Intervals resample related items together (evaluation/stats.py): a synthetic split's items
    of one arithmetic skeleton, GSM-PLUS's eight perturbations of one GSM8K question; other tasks'
    items stand alone. The cluster reaches every prediction row."""
    synthetic = load_records(DatasetConfig(name="synthetic", split="test", limit=1000)).records
    clusters = [tasks.record_cluster(r) for r in synthetic]
    assert clusters[0] == f"skeleton:{synthetic[0]['meta']['skeleton']}"
    # 1,000 test items from 753 skeletons; the 321 one-step items from 95
    assert len(set(clusters)) == 753
    assert len({c for c, r in zip(clusters, synthetic) if r["meta"]["num_ops"] == 1}) == 95
    path = str(shared_data / "samples" / "gsm_plus_testmini.sample.jsonl")
    plus = load_records(DatasetConfig(name="gsm_plus", split="testmini", path=path)).records
    by_cluster: dict[str, set] = {}
    for r in plus:
        by_cluster.setdefault(tasks.record_cluster(r), set()).add(r["meta"]["seed_question"])
    assert len(by_cluster) == 5 and all(len(seeds) == 1 for seeds in by_cluster.values())
    assert sorted(sum(tasks.record_cluster(r) == c for r in plus) for c in by_cluster) == [8] * 5
    gsm8k = load_records(DatasetConfig(name="gsm8k", split="test", path=str(shared_data / "gsm8k" / "test.jsonl"),
                                       limit=3)).records
    assert [tasks.record_cluster(r) for r in gsm8k] == [r["id"] for r in gsm8k]
    # a record whose skeleton is unknown (a local file of older records) stands alone
    assert tasks.record_cluster({**synthetic[0], "meta": {}}) == synthetic[0]["id"]
    prediction = score_prediction({**synthetic[0], "prompt": "", "responses": [synthetic[0]["meta"]["solution"]],
                                   "token_lengths": [9], "finish_reasons": ["stop"]})
    assert prediction["correct"] and prediction["cluster"] == clusters[0]
