"""The tables between stages (advdistill.schema): a curated groups folder whose shards differ in
what their rows hold — mixed tasks, a shard whose `choices` and `reference` are all null next to
one where they are typed — reads as one dataset with `datasets`, pyarrow and Ray Data, with no
schema promotion."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from advdistill.config import DatasetConfig
from advdistill.curate.stage import score_curated
from advdistill.curate.store import CurateOutput, read_shards
from advdistill.data.loaders import load_records
from advdistill.prompts import template_response
from advdistill.schema import CuratedGroup, Prediction, Record, arrow_schema, columns, from_arrow, to_arrow


def jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def curated(records, answers, cfg):
    """Each record with two teacher responses (the given answer, then a wrong one), scored for real."""
    rows = []
    for record, answer in zip(records, answers):
        responses = [template_response("steps", answer), template_response("steps", "12345")]
        generated = {**record, "prompt": "p", "responses": responses, "token_lengths": [30, 30],
                     "finish_reasons": ["stop", "stop"]}
        rows.append(score_curated(generated, cfg))
    return rows


@pytest.fixture(scope="module")
def groups_folder(tmp_path_factory, tiny_cfg):
    """Three shards, as three curation batches would write them: synthetic (choices all null),
    MMLU-Pro (choices typed), GSM-PLUS critical thinking (reference all null)."""
    tmp = tmp_path_factory.mktemp("mixed")
    synthetic = load_records(DatasetConfig(name="synthetic", split="test", limit=3)).records
    mmlu = load_records(DatasetConfig(name="mmlu_pro", split="validation", path=jsonl(tmp / "mmlu.jsonl", [
        {"question_id": i, "question": f"Pick {i}", "options": ["x", "y", "z"], "answer": "B", "category": "math"}
        for i in range(3)]))).records
    critical = load_records(DatasetConfig(name="gsm_plus", split="testmini", path=jsonl(tmp / "gsm_plus.jsonl", [
        {"question": f"Tom has some apples {i}", "answer": "None", "perturbation_type": "critical thinking"}
        for i in range(2)]))).records
    assert all(r["choices"] is None for r in synthetic) and all(r["reference"] is None for r in critical)
    out = CurateOutput(tmp / "curate")
    for records, answers in ((synthetic, [r["reference"] for r in synthetic]), (mmlu, ["B"] * 3),
                             (critical, ["\\text{not enough information}"] * 2)):
        out.write_groups(to_arrow(curated(records, answers, tiny_cfg), arrow_schema(CuratedGroup)))
    assert len(list(out.groups.glob("*.parquet"))) == 3
    return out.groups


def test_every_shard_has_the_one_schema(groups_folder):
    schema = arrow_schema(CuratedGroup)
    for path in groups_folder.glob("*.parquet"):
        assert pq.read_schema(path).remove_metadata() == schema
    table = pa.concat_tables([pq.read_table(p) for p in sorted(groups_folder.glob("*.parquet"))])  # no promotion
    assert table.num_rows == 8 and table.schema.field("choices").type == pa.list_(pa.string())
    assert pq.read_table(groups_folder).num_rows == 8  # the folder as one pyarrow dataset


def test_the_folder_loads_with_datasets(groups_folder, tmp_path):
    from datasets import load_dataset

    ds = load_dataset("parquet", data_files=str(groups_folder / "*.parquet"), split="train", cache_dir=str(tmp_path))
    assert ds.num_rows == 8 and list(ds.column_names) == list(columns(CuratedGroup))
    rows = {r["id"]: r for r in ds}
    assert {r["task"] for r in rows.values()} == {"synthetic", "mmlu_pro", "gsm_plus"}
    assert rows["mmlu_pro-0"]["choices"] == ["x", "y", "z"] and rows["mmlu_pro-0"]["correct"] == [True, False]
    critical = [r for r in rows.values() if r["task"] == "gsm_plus"]
    assert all(r["reference"] is None and r["correct"] == [True, False] for r in critical)
    assert json.loads(rows["mmlu_pro-0"]["meta"]) == {"category": "math", "src": None}  # meta is JSON text on disk


def test_the_folder_loads_with_ray_data(ray_cluster, groups_folder):
    import ray

    ds = ray.data.read_parquet(str(groups_folder))
    assert ds.count() == 8 and ds.schema().names == list(columns(CuratedGroup))
    rows = from_arrow(pa.Table.from_pylist(ds.take_all()))
    assert {r["id"]: r["meta"] for r in rows}["mmlu_pro-1"] == {"category": "math", "src": None}


def test_rows_round_trip_with_meta_as_a_dict(groups_folder):
    rows = from_arrow(read_shards(groups_folder))
    assert all(isinstance(r["meta"], dict) for r in rows)
    again = from_arrow(to_arrow(rows, arrow_schema(CuratedGroup)))
    assert again == rows


def test_a_row_missing_a_column_or_with_encoded_meta_is_refused():
    record = {"id": "a", "task": "synthetic", "question": "q", "reference": "1", "choices": None, "meta": {}}
    assert from_arrow(to_arrow([record], arrow_schema(Record))) == [record]
    with pytest.raises(KeyError, match="choices"):
        to_arrow([{k: v for k, v in record.items() if k != "choices"}], arrow_schema(Record))
    with pytest.raises(TypeError, match="meta must be a dict"):
        to_arrow([{**record, "meta": "{}"}], arrow_schema(Record))


def test_shards_written_before_the_schema_still_read(tmp_path):
    """Older shards inferred their types from their rows (an all-null `choices` became `null`):
    reading with the schema casts them."""
    rows = [{name: None for name in columns(CuratedGroup)} | {"id": "old", "meta": "{}", "keep": True}]
    folder = tmp_path / "groups"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), folder / "old.parquet")
    assert pa.Table.from_pylist(rows).schema.field("choices").type == pa.null()
    table = read_shards(folder)
    assert table.schema == arrow_schema(CuratedGroup) and table.column("id").to_pylist() == ["old"]


def test_the_apis_response_models_cover_every_prediction_column_and_breakdown():
    """/openapi.json describes what /evaluate returns: a field the evaluator adds and the
    response model lacks would be dropped from every answer without an error."""
    from advdistill.evaluation.metrics import summarize
    from advdistill.serve import schemas
    from advdistill.tasks import breakdown_fields

    # derived from the task registry (a new task's breakdown field needs no edit here: test_tasks)
    EvaluateMetrics, ItemResult, *_ = models = schemas.response_models()
    assert models == (schemas.EvaluateMetrics, schemas.ItemResult, schemas.EvaluateResponse, schemas.EvaluationJob)
    assert set(columns(Prediction)) | set(breakdown_fields()) == set(ItemResult.model_fields)
    assert {f"by_{name}" for name in breakdown_fields()} <= set(EvaluateMetrics.model_fields)
    metrics = summarize(["<think>a</think><answer>\\boxed{1}</answer>", "x"], [5, 3], [True, False])
    assert set(metrics) == {name for name in EvaluateMetrics.model_fields if not name.startswith("by_")}
    EvaluateMetrics.model_validate(metrics)


def test_the_openai_routes_document_json_and_event_stream_answers():
    """With `stream: true` /v1/completions and /v1/chat/completions answer server-sent events:
    /openapi.json documents both content types of their 200 (read from the app, no Serve)."""
    from advdistill.serve.api import make_api

    paths = make_api().openapi()["paths"]
    for route, model in (("/v1/completions", "Completion"), ("/v1/chat/completions", "ChatCompletion")):
        content = paths[route]["post"]["responses"]["200"]["content"]
        assert content["application/json"]["schema"] == {"$ref": f"#/components/schemas/{model}"}
        event = content["text/event-stream"]["schema"]
        assert event["required"] == ["data"] and event["properties"]["data"]["type"] == "string"
    assert set(paths["/evaluate"]["post"]["responses"]["200"]["content"]) == {"application/json"}
