"""A task declared in a config (issue 29): tests/own_task is a user's project — a JSONL of its own,
a verifier and an extra reward term in its own package (`my_pkg`), and the README's YAML — that
this file reads as the user would, from its folder. The whole method on it, through `ray job
submit --working-dir` and the API, is tests/test_own_task.py."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from advdistill import task_declaration
from advdistill.config import ConfigError, DatasetConfig, load_config
from advdistill.data.loaders import load_records
from advdistill.schema import Record, columns
from advdistill.scoring import judge, score_group
from advdistill.scoring.rewards import composite_reward
from advdistill.scoring.verify import answers_match, normalise
from advdistill.tasks import TaskSpec, breakdown_fields, get_task, record_cluster, register_task, task_names

OWN_TASK = Path(__file__).resolve().parent / "own_task"
TASK = "unit-conversion"


@pytest.fixture
def project(monkeypatch):
    """The user's project folder as the working directory; the task forgotten afterwards."""
    monkeypatch.chdir(OWN_TASK)
    monkeypatch.syspath_prepend(str(OWN_TASK))
    yield OWN_TASK
    task_declaration.forget(TASK)


@pytest.fixture
def cfg(project):
    return load_config("unit-conversion.yaml")


def test_the_declared_task_is_a_task_like_the_built_in_ones(cfg):
    assert TASK in task_names() and get_task(TASK).answer == "custom"
    assert load_config("unit-conversion.yaml", [f"eval.ood=[{{name: {TASK}, split: train, limit: 2}}]"]).eval.ood[0].limit == 2
    loaded = load_records(cfg.curate.dataset)
    assert len(loaded.records) == 8 and loaded.quarantined == []
    first = loaded.records[0]
    assert tuple(first) == columns(Record)
    # Mapped columns become the record's fields, the others its meta (the breakdown field as text).
    assert (first["id"], first["reference"], first["task"]) == ("train-00", "14 kg", TASK)
    assert first["meta"] == {"template_id": "9+8-3", "difficulty": "hard"}
    assert record_cluster(first) == "template_id:9+8-3"
    test = load_records(cfg.eval.test).records
    assert [r["id"] for r in test] == [f"test-{i:02d}" for i in range(6)]  # the file's split column
    assert "difficulty" in breakdown_fields()


def test_a_declared_task_reaches_a_fresh_process_through_the_environment(cfg):
    """What a Ray worker or Serve replica does: it imports the package with ADVDISTILL_TASKS set
    (forwarded by init_ray, given to the ingress by build_app) and has the task before anything
    reads the registry — the API's answer schema included. It imports nothing of `my_pkg`."""
    exported = json.loads(os.environ[task_declaration.ENV_VAR])
    assert [d["name"] for d in exported] == [TASK]
    code = ("import sys, advdistill.tasks as t; from advdistill.serve.schemas import EvaluateMetrics; "
            "print(t.get_task('unit-conversion').verifier, 'by_difficulty' in EvaluateMetrics.model_fields, "
            "'my_pkg' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": ""})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["my_pkg.checks:is_equivalent", "True", "False"]


def test_the_custom_verifier_judges_with_the_record_and_a_broken_one_counts_as_incorrect(cfg, caplog):
    records = {r["id"]: r for r in load_records(cfg.eval.test).records}
    item = records["test-00"]
    number, unit = item["reference"].split()
    answer = lambda text: f"<think>so</think><answer>\\boxed{{{text}}}</answer>"  # noqa: E731
    assert judge(answer(number), "stop", item["reference"], TASK, item).correct
    assert judge(answer(f"{number} {unit}"), "stop", item["reference"], TASK, item).correct
    assert not judge(answer(f"{number} g"), "stop", item["reference"], TASK, item).correct
    assert not judge(answer(number), "length", item["reference"], TASK, item).correct  # truncated
    broken = records["test-05"]  # its check raises: incorrect, the reason logged once
    with caplog.at_level(logging.WARNING, logger="advdistill.scoring.custom_verifier"):
        assert not answers_match("22", broken["reference"], TASK, broken)
        assert not answers_match("22", broken["reference"], TASK, broken)
    reasons = [r.getMessage() for r in caplog.records]
    assert len(reasons) == 1 and "raised ValueError: no rule for item test-05" in reasons[0]


def test_a_verifier_that_hangs_is_stopped_at_its_time_limit(cfg, caplog):
    item = {**load_records(cfg.eval.test).records[0]}
    item["meta"] = {**item["meta"], "check": "hang"}  # the verifier sleeps an hour on it
    with caplog.at_level(logging.WARNING, logger="advdistill.scoring.custom_verifier"):
        assert answers_match(item["reference"], item["reference"], TASK, item) is False
    assert "no verdict within 1.0 s" in caplog.text


def test_extra_reward_terms_are_added_before_the_advantages(cfg):
    item = load_records(cfg.curate.dataset).records[0]
    texts = ["<think>a</think><answer>\\boxed{14}</answer>", "<answer>\\boxed{3}</answer>"]
    scored = score_group(texts, [20, 50], ["stop", "stop"], item["reference"], TASK, cfg.reward, cfg.advantage, item)
    assert scored["correct"] == [True, False]
    expected = [composite_reward(t, n, ok, False, cfg.reward) + 0.5 * (-n / 100)
                for t, n, ok in zip(texts, [20, 50], [True, False])]
    assert scored["rewards"] == pytest.approx(expected)


def test_a_reward_term_that_raises_adds_nothing_and_is_logged_once(project, caplog):
    cfg = load_config("unit-conversion.yaml", ["reward.extra=[{fn: 'my_pkg.checks:is_equivalent', weight: 3}]"])
    item = load_records(cfg.curate.dataset).records[0]  # is_equivalent reads record["meta"]: the text is no record
    with caplog.at_level(logging.WARNING, logger="advdistill.scoring.rewards"):
        scored = score_group(["x", "y"], [5, 6], ["stop", "stop"], item["reference"], TASK, cfg.reward, cfg.advantage,
                             item)
    assert scored["rewards"] == pytest.approx([composite_reward(t, n, False, False, cfg.reward)
                                               for t, n in (("x", 5), ("y", 6))])
    assert caplog.text.count("reward term my_pkg.checks:is_equivalent failed") == 1


@pytest.mark.parametrize("override, says", [
    ("task.answer=fuzzy", "task.answer: Input should be 'number', 'math', 'multiple_choice', 'exact', 'regex' or"),
    ("task.verifier=my_pkg.checks:missing", "task.verifier: my_pkg.checks:missing: my_pkg.checks has no function"),
    ("task.verifier=no_such_pkg.checks:f", "module 'no_such_pkg.checks' does not import"),
    ("task.verifier=my_pkg.rewards:brevity", None),  # right arity, another function: its business
    ("task.verifier=json:dumps", "task.verifier: json:dumps must take 3 arguments (extracted, reference, record)"),
    ("task.answer=number", "task.verifier: give one (module:function) for answer: custom, and only then"),
    ("task.name=gsm8k", "task.name: 'gsm8k' is a built-in task"),
    ("task.splits={seeded_test_size: 0}", "task.splits: {seeded_test_size: N[, source: SPLIT]} with N >= 1"),
    ("reward.extra=[{fn: 'json:dumps'}]", "reward.extra.0: json:dumps must take 3 arguments (response, record, tokens)"),
])
def test_a_bad_declaration_fails_naming_the_field(project, override, says):
    if says is None:
        assert load_config("unit-conversion.yaml", [override]).task.verifier == "my_pkg.rewards:brevity"
        return
    with pytest.raises(ConfigError) as error:
        load_config("unit-conversion.yaml", [override])
    assert says in str(error.value)
    if not override.startswith("task.name"):  # the datasets naming the declared task: its failure said once
        assert "unknown task 'unit-conversion'" not in str(error.value)


@pytest.mark.parametrize("override, says", [
    ("task.fields.answer=goal", "task.fields.answer: column 'goal' is not in data/units.jsonl"),
    ("task.group_by=level", "task.group_by: column 'level' is not in data/units.jsonl"),
    ("task.splits={train: train, test: dev}", "task.splits: data/units.jsonl has no rows of split 'dev'"),
    ("task.source.path=data/units-{split}.jsonl", "task.source.path: data/units-test.jsonl (split 'test') is not a file"),
])
def test_the_source_is_checked_before_ray_starts(project, override, says):
    with pytest.raises(ValueError, match="^" + says.replace("(", r"\(").replace(")", r"\)").replace("{", r"\{")):
        task_declaration.check_source(load_config("unit-conversion.yaml", [override]).task)


def test_a_task_file_the_config_names_and_a_seeded_split(project, tmp_path):
    declaration = {"task": {"name": TASK, "source": {"path": str(OWN_TASK / "data" / "units.jsonl")},
                            "fields": {"question": "prompt", "answer": "target"}, "answer": "exact",
                            "splits": {"seeded_test_size": 4}}}
    (tmp_path / "task.yaml").write_text(json.dumps(declaration))
    cfg = load_config(None, [f"task={tmp_path / 'task.yaml'}", f"eval.test={{name: {TASK}, split: test}}"])
    assert cfg.task.answer == "exact" and cfg.task.source.path.endswith("units.jsonl")
    test = load_records(cfg.eval.test).records
    train = load_records(DatasetConfig(name=TASK, split="train")).records
    assert len(test) == 4 and len(train) == 10 and not {r["id"] for r in test} & {r["id"] for r in train}
    assert test[0]["id"].startswith(f"{TASK}-train-")  # no id column: task, source split, row (stable across splits)


def test_exact_and_regex_answers():
    assert normalise("  \\text{New York}. ") == normalise("new   york") == "new york"
    register_task(TaskSpec("toy-exact", "exact", lambda row, split, index: row, {"test": "test"}))
    register_task(TaskSpec("toy-regex", "regex", lambda row, split, index: row, {"test": "test"},
                           pattern=r"{reference}\s*(km|kilometres?)?"))
    register_task(TaskSpec("toy-pattern", "regex", lambda row, split, index: row, {"test": "test"}))
    try:
        assert answers_match("\\text{Paris}", "paris", "toy-exact") and not answers_match("Paris, FR", "paris", "toy-exact")
        assert answers_match("4.5 km", "4.5", "toy-regex") and answers_match("4.5", "4.5", "toy-regex")
        assert not answers_match("4x5 km", "4.5", "toy-regex")  # the reference is escaped: '.' is a dot
        assert answers_match("2026-12-07", r"\d{4}-\d{2}-\d{2}", "toy-pattern")  # the reference is the pattern
        assert not answers_match("7 Dec", r"\d{4}-\d{2}-\d{2}", "toy-pattern")
    finally:
        for name in ("toy-exact", "toy-regex", "toy-pattern"):
            from advdistill.tasks import TASKS
            TASKS.remove(name)


def test_the_serve_ingress_gets_the_declared_tasks_in_its_runtime_env(cfg):
    """`build_app` gives them to the ingress replica, which builds its schemas on import."""
    options = task_declaration.with_declared_tasks({"num_cpus": 1, "runtime_env": {"env_vars": {"TOKEN": "t"}}})
    env = options["runtime_env"]["env_vars"]
    assert options["num_cpus"] == 1 and env["TOKEN"] == "t"
    assert [d["name"] for d in json.loads(env[task_declaration.ENV_VAR])] == [TASK]
    task_declaration.forget(TASK)
    assert task_declaration.with_declared_tasks(None) is None and task_declaration.ENV_VAR not in os.environ
    assert TASK not in task_names()
