"""A task advdistill does not ship, end to end (issue 29.2): tests/own_task is a user's project (a
JSONL of word problems whose references carry units, a verifier and an extra reward term in its
own package `my_pkg`, and the README's YAML). `distill.py --serve` runs on it through `ray job
submit --working-dir tests/own_task` on the suite's cluster — so `my_pkg` reaches the Ray Data
scoring actors, the Ray Train workers and the Serve replicas only as the job's working dir — and
the API then answers for the task. The tiny teacher is not meant to be good at it: the checks
are the plumbing and the verdicts (every saved verdict and reward recomputed here with the
user's own functions), not accuracy."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest

from conftest import REPO, free_port

OWN_TASK = REPO / "tests" / "own_task"
TASK = "unit-conversion"
sys.path.insert(0, str(OWN_TASK))  # the user's package, to recompute its verdicts here

from my_pkg.checks import is_equivalent  # noqa: E402
from my_pkg.rewards import brevity  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def forget_the_task():
    """Reading the run's config declares the task in this process too: forgotten afterwards."""
    yield
    from advdistill.task_declaration import forget

    forget(TASK)


@pytest.fixture(scope="module")
def served(ray_cluster, tmp_path_factory):
    """The job's run folder and the API's URL once `distill.py --serve` serves; the job stopped and
    Serve shut down at the end (serving never ends by itself)."""
    from ray import serve
    from ray.job_submission import JobStatus, JobSubmissionClient

    output = tmp_path_factory.mktemp("own-task") / "run"
    port = free_port()
    # The transformers engine: the tiny models load in a second where a vLLM engine starts in many
    # (the vLLM path is tests/test_distill_e2e.py's); what is tested here is the task's plumbing.
    entrypoint = (f"python {REPO / 'ray_jobs' / 'distill.py'} --config unit-conversion.yaml --output {output} --serve "
                  f"--set serve.port={port} --set curate.engine.backend=transformers "
                  "--set eval.engine.backend=transformers")
    client = JobSubmissionClient(ray_cluster.dashboard)
    job = client.submit_job(entrypoint=entrypoint, runtime_env={"working_dir": str(OWN_TASK)})
    started, logs = time.time(), ""
    try:
        while time.time() - started < 900:
            status = client.get_job_status(job)
            if status in (JobStatus.FAILED, JobStatus.STOPPED, JobStatus.SUCCEEDED):
                break
            manifest = json.loads((output / "run.json").read_text()) if (output / "run.json").is_file() else {}
            if manifest.get("serve"):
                break
            time.sleep(2)
        logs = client.get_job_logs(job)
        assert (output / "run.json").is_file() and "serve" in json.loads((output / "run.json").read_text()), \
            f"job {status} after {time.time() - started:.0f} s:\n{logs[-6000:]}"
        print(f"own task: serving after {time.time() - started:.0f} s")
        yield output, f"http://127.0.0.1:{port}", logs
    finally:
        try:
            client.stop_job(job)
        except Exception:  # noqa: BLE001 - the job may have ended on its own
            pass
        serve.shutdown()  # the job's Serve replicas are detached: they outlive the job


def records(split: str) -> dict[str, dict]:
    rows = [json.loads(line) for line in (OWN_TASK / "data" / "units.jsonl").read_text().splitlines()]
    return {r["uid"]: {"id": r["uid"], "task": TASK, "question": r["prompt"], "reference": r["target"],
                       "choices": None, "meta": {k: r[k] for k in r if k not in ("uid", "prompt", "target", "split")}}
            for r in rows if r["split"] == split}


def verdict(extracted: str | None, finish: str, record: dict) -> bool:
    """What the user's verifier says, with advdistill's rules around it (no answer or a truncated
    response: incorrect; a verifier that raises: incorrect)."""
    if extracted is None or finish == "length":
        return False
    try:
        return is_equivalent(extracted, record["reference"], record)
    except ValueError:
        return False


def test_curation_judged_with_the_users_verifier_and_rewarded_with_its_extra_term(served):
    from advdistill.config import load_config
    from advdistill.scoring import extract_answer
    from advdistill.scoring.rewards import composite_reward

    output, _, _ = served
    summary = json.loads((output / "curate" / "summary.json").read_text())
    assert (summary["prompts_read"], summary["quarantined"]) == (8, 0)
    cfg = load_config(output / "curate" / "config.yaml")  # the run's own, task declaration included
    train = records("train")
    groups = [row for kind in ("groups", "dropped") for f in (output / "curate" / kind).glob("*.parquet")
              for row in pq.read_table(f).to_pylist()]
    assert sorted(g["id"] for g in groups) == sorted(train)
    for group in groups:
        record = train[group["id"]]
        for text, tokens, finish, correct, reward in zip(group["responses"], group["token_lengths"],
                                                         group["finish_reasons"], group["correct"], group["rewards"]):
            expected = verdict(extract_answer(text, TASK), finish, record)
            assert correct == expected, (group["id"], text)
            truncated = finish == "length"
            assert reward == pytest.approx(composite_reward(text, tokens, expected, truncated, cfg.reward)
                                           + 0.5 * brevity(text, record, tokens))
    assert any(g["keep"] for g in groups), "no kept group: the teacher never answered right (plumbing untested)"


def test_evaluation_and_report_treat_it_as_a_task(served):
    output, _, logs = served
    test = records("test")
    for model in ("teacher", "base", "advdistill"):
        folder = output / "eval" / f"{model}-{TASK}-test"
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["n"] == 6 and set(metrics["by_difficulty"]) == {"easy", "hard"}
        for p in map(json.loads, (folder / "predictions.jsonl").read_text().splitlines()):
            record = test[p["id"]]
            assert p["correct"] == verdict(p["extracted"], p["finish_reason"], record), p
            assert (p["difficulty"], p["cluster"]) == (record["meta"]["difficulty"],
                                                       f"template_id:{record['meta']['template_id']}")
    report = (output / "report" / "report.md").read_text()
    assert f"| {TASK}-test (n = 6 items, 6 clusters) |" in report and f"### {TASK}-test: accuracy by difficulty" in report
    # The item whose check raises was judged (incorrect), the run went on, and the reason was logged.
    assert "no rule for item test-05" in logs


def test_the_api_evaluates_the_declared_task(served):
    _, url, _ = served
    models = httpx.get(f"{url}/models", timeout=30).json()
    assert {m["name"] for m in models["models"]} == {"teacher", "base", "advdistill"}
    schema = httpx.get(f"{url}/openapi.json", timeout=30).json()["components"]["schemas"]
    assert TASK in schema["Item"]["properties"]["task"]["description"]
    assert "by_difficulty" in schema["EvaluateMetrics"]["properties"]
    test = records("test")
    first = test["test-00"]
    answer = httpx.post(f"{url}/evaluate", timeout=300, json={
        "model": "teacher", "items": [{"question": first["question"], "reference": first["reference"], "task": TASK}]})
    assert answer.status_code == 200, answer.text
    result = answer.json()["results"][0]
    assert result["correct"] == verdict(result["extracted"], result["finish_reason"], first)
    job = httpx.post(f"{url}/evaluations", timeout=300,
                     json={"model": "advdistill", "dataset": {"name": TASK, "split": "test"}})
    assert job.status_code == 202, job.text
    for _ in range(150):
        state = httpx.get(f"{url}/evaluations/{job.json()['id']}", timeout=30).json()
        if state["status"] in ("done", "failed", "interrupted"):
            break
        time.sleep(2)
    assert state["status"] == "done", state
    result = state["result"]
    assert result["metrics"]["n"] == 6 and set(result["metrics"]["by_difficulty"]) == {"easy", "hard"}
    for item in result["results"]:
        assert item["correct"] == verdict(item["extracted"], item["finish_reason"], test[item["id"]]), item
    assert {item["id"]: item["correct"] for item in result["results"]}["test-05"] is False
