"""A rerun never mixes two runs (issue 30.2): every stage's output is fingerprinted, a rerun with
other settings is refused before Ray starts naming the fields, `--restart` starts over and
removes only the stage's own files. Pure: the fingerprint, the claim, and each entry point up to
the moment it would start Ray. (Real resumes: tests/test_curate.py, test_train.py,
test_distill_e2e.py.)"""

from __future__ import annotations

import json
import runpy
import shutil

import pytest
from pydantic import BaseModel

from advdistill.config import ExperimentConfig, with_overrides
from advdistill.curate.store import CurateOutput
from advdistill.fingerprint import (MAY_CHANGE_ON_RESUME, OTHER_STAGES, Fingerprint, config_fields,
                                    curate_fingerprint, eval_fingerprint, flatten, matches, path_identity,
                                    run_fingerprint, train_fingerprint)
from advdistill.rerun import FINGERPRINT_FILE, RerunMismatch, claim
from advdistill.train.trainer import TrainOutput

from conftest import REPO, TINY_STUDENT, TINY_TEACHER
from groups_fixture import write_groups

GROUPS = {"shards": 1, "rows": 24, "listing": "0123456789abcdef"}


def fingerprints(cfg) -> dict[str, Fingerprint]:
    return {"curate": curate_fingerprint(cfg, 0), "train": train_fingerprint(cfg, str(TINY_STUDENT), GROUPS),
            "evaluate": eval_fingerprint(cfg, str(TINY_STUDENT), cfg.eval.test, 0), "run": run_fingerprint(cfg)}


# ------------------------------------------------------------------ what a fingerprint holds


def test_every_listed_field_names_a_config_field():
    """The may-change and other-stage lists name real fields: a renamed field cannot leave a stale
    entry that silently stops excluding (or including) anything."""
    keys = list(flatten(ExperimentConfig().model_dump(mode="json")))
    for pattern in [*MAY_CHANGE_ON_RESUME, *(p for stage in OTHER_STAGES.values() for p in stage)]:
        assert any(matches(key, pattern) for key in keys), pattern


def test_the_readme_states_every_field_that_may_change_on_resume():
    readme = (REPO / "README.md").read_text()
    assert [key for key in MAY_CHANGE_ON_RESUME if f"`{key}`" not in readme] == []


def test_a_config_section_added_later_is_in_every_stage_fingerprint(tiny_cfg):
    class Declared(BaseModel):
        name: str = "unit-conversion"

    class Extended(ExperimentConfig):
        declared: Declared = Declared()

    cfg = Extended.model_validate(tiny_cfg.model_dump())
    for stage in OTHER_STAGES:
        assert config_fields(cfg, stage)["declared.name"] == "unit-conversion", stage


@pytest.mark.parametrize("override, changed", [
    ({"train.lr": 1e-2}, {"train", "run"}),
    ({"train.method": "sft"}, {"train", "run"}),
    ({"curate.sampling.temperature": 0.5}, {"curate", "run"}),
    ({"reward.w_fmt": 0.5}, {"curate", "run"}),
    ({"advantage.eps": 1e-3}, {"curate", "train", "run"}),
    ({"eval.max_tokens": 64}, {"evaluate", "run"}),
    ({"prompt.system_prompt": "Answer."}, {"curate", "train", "evaluate", "run"}),
    ({"eval.ood": []}, {"run"}),  # an evaluation's dataset is its own input, not the list
    ({"sft_baseline": False}, {"run"}),
    # what may change on resume changes no fingerprint
    ({"train.num_workers": 2, "train.resources.cpus_per_worker": 1, "curate.resources.max_actors": 3,
      "eval.engine.batch_size": 8, "curate.progress_every_s": 1.0, "tracking.enabled": False, "serve.port": 9000,
      "name": "renamed", "train.report_every": 1, "train.checkpoint_every": 2, "train.max_failures": 0}, set()),
])
def test_each_fingerprint_changes_with_what_its_stage_computes(tiny_cfg, override, changed):
    before, after = fingerprints(tiny_cfg), fingerprints(with_overrides(tiny_cfg, override))
    differ = {stage for stage in before if after[stage].differences(before[stage])}
    assert differ == changed
    for stage in differ:  # each names the field
        assert any(d.startswith(next(iter(override))) for d in after[stage].differences(before[stage])), stage


def test_differences_name_each_field_and_skip_a_new_field_at_its_default(tiny_cfg):
    now = train_fingerprint(with_overrides(tiny_cfg, {"train.lr": 1e-2}), str(TINY_STUDENT), {**GROUPS, "rows": 20})
    earlier = train_fingerprint(tiny_cfg, str(TINY_STUDENT), GROUPS)
    assert now.differences(earlier) == ["input.groups.rows: 24 → 20", "train.lr: 0.0003 → 0.01"]
    # An earlier fingerprint without a field the code added since: no difference at its default,
    # a difference at any other value.
    older = Fingerprint("train", {k: v for k, v in earlier.fields.items() if k != "train.bf16"})
    assert earlier.differences(older) == []
    changed = train_fingerprint(with_overrides(tiny_cfg, {"train.bf16": False}), str(TINY_STUDENT), GROUPS)
    assert changed.differences(older) == ["train.bf16: (none) → false"]
    assert Fingerprint.from_json(now.to_json()).differences(now) == []


def test_paths_are_identified_by_what_they_hold(tiny_cfg, tmp_path, monkeypatch):
    data = tmp_path / "units.jsonl"
    data.write_text('{"question": "1 km in m?", "answer": "1000"}\n')
    before = path_identity(str(data))
    data.write_text('{"question": "1 km in m?", "answer": "1001"}\n')  # same size, other content
    assert path_identity(str(data))["bytes"] == before["bytes"] and path_identity(str(data)) != before

    model = tmp_path / "student"
    shutil.copytree(TINY_STUDENT, model)
    before = path_identity(str(model))
    assert before == path_identity(str(TINY_STUDENT))  # a copy (or a job's unpacked working dir) is the same model
    # the fingerprint holds what the path holds, not the path
    assert train_fingerprint(with_overrides(tiny_cfg, {"student": str(model)}), str(model), GROUPS).differences(
        train_fingerprint(tiny_cfg, str(TINY_STUDENT), GROUPS)) == []
    weights = model / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01  # a retrained export: other weights, the same size
    weights.write_bytes(bytes(data))
    assert path_identity(str(model))["files"] != before["files"] and path_identity(str(model))["config"] == before["config"]
    # a file over the limit is hashed by windows spread over it: a change inside one is seen
    monkeypatch.setattr("advdistill.fingerprint.FILE_HASH_LIMIT", 1024)
    monkeypatch.setattr("advdistill.fingerprint.WINDOW", 64)
    sampled = path_identity(str(model))
    assert sampled["files"] != before["files"]
    data[(len(data) - 64) * 8 // 15 + 10] ^= 0x01  # inside the 9th window
    weights.write_bytes(bytes(data))
    assert path_identity(str(model))["files"] != sampled["files"]
    assert path_identity("Qwen/Qwen2.5-1.5B") is None and path_identity("synthetic") is None
    assert path_identity("http://127.0.0.1:8000/v1") is None


# ------------------------------------------------------------------ claiming a folder


def test_a_folder_is_fresh_then_resumed_refused_or_restarted(tiny_cfg, tmp_path):
    out = TrainOutput(tmp_path / "train")
    first = train_fingerprint(tiny_cfg, str(TINY_STUDENT), GROUPS)
    assert claim(out.folder, first, out.owned) == "fresh"
    assert json.loads((out.folder / FINGERPRINT_FILE).read_text())["fields"]["train.lr"] == 3e-4
    (out.checkpoints / "checkpoint_x").mkdir(parents=True)
    out.result.write_text("{}")
    (out.folder / "notes.txt").write_text("mine")
    assert claim(out.folder, first, out.owned) == "resumed"

    other = train_fingerprint(with_overrides(tiny_cfg, {"train.method": "sft", "train.lr": 1e-2}), str(TINY_TEACHER),
                              {**GROUPS, "listing": "fedcba9876543210"})
    with pytest.raises(RerunMismatch) as err:
        claim(out.folder, other, out.owned)
    for field in ("train.method", "train.lr", "input.groups.listing", "student"):
        assert field in str(err.value)
    assert "--restart" in str(err.value) and out.result.is_file()  # refused: nothing touched

    logged: list[str] = []
    assert claim(out.folder, other, out.owned, restart=True, log=logged.append) == "restarted"
    assert not out.result.exists() and not out.checkpoints.exists()
    assert (out.folder / "notes.txt").read_text() == "mine"  # not the stage's: it stays
    assert "checkpoints" in logged[0] and "result.json" in logged[0]
    assert claim(out.folder, other, out.owned) == "resumed"


def test_a_folder_written_before_fingerprints_is_adopted_and_another_stages_is_never_restarted(tiny_cfg, tmp_path):
    out = CurateOutput(tmp_path / "curate")
    out.groups.mkdir(parents=True)
    logged: list[str] = []
    assert claim(out.folder, curate_fingerprint(tiny_cfg, 0), out.owned, log=logged.append) == "adopted"
    assert "--restart" in logged[0]
    train_out = TrainOutput(out.folder)
    with pytest.raises(RerunMismatch, match="holds a curate output, not a train one"):
        claim(train_out.folder, train_fingerprint(tiny_cfg, str(TINY_STUDENT), GROUPS), train_out.owned, restart=True)
    assert out.groups.is_dir()

    (out.folder / FINGERPRINT_FILE).write_text('{"fields": ')  # torn
    with pytest.raises(RerunMismatch, match="unreadable"):
        claim(out.folder, curate_fingerprint(tiny_cfg, 0), out.owned)
    assert claim(out.folder, curate_fingerprint(tiny_cfg, 0), out.owned, restart=True) == "restarted"


# ------------------------------------------------------------------ each entry point, before Ray


class ReachedRay(Exception):
    """The entry point got past its checks to the point of starting Ray."""


def entry_point(name: str):
    main = runpy.run_path(str(REPO / "ray_jobs" / f"{name}.py"))["main"]

    def stop():
        raise ReachedRay

    main.__globals__["init_ray"] = stop  # the test ends where Ray would start
    return main


@pytest.fixture(scope="module")
def groups(tmp_path_factory, tiny_tokenizer, tiny_cfg):
    first = write_groups(tmp_path_factory.mktemp("groups"), tiny_tokenizer, tiny_cfg, n=8)
    other = write_groups(tmp_path_factory.mktemp("other-groups"), tiny_tokenizer, tiny_cfg, n=8, seed=1)
    return first, other


def entry_cases(groups, out):
    """(entry point, its args, (changed args, a field the refusal names), an output file of it)."""
    models = ["--set", f"teacher={TINY_TEACHER}", "--set", f"student={TINY_STUDENT}"]
    return {
        "curate": (["--output", out, "--limit", "8", *models],
                   (["--set", "curate.sampling.temperature=0.5"], "curate.sampling.temperature"), "summary.json"),
        "train": (["--groups", groups[0], "--output", out, *models],
                  (["--method", "sft", "--set", "train.lr=1e-2", "--groups", groups[1]], "input.groups"),
                  "result.json"),
        "evaluate": (["--model", str(TINY_STUDENT), "--dataset", "synthetic", "--split", "test", "--limit", "8",
                      "--output", out, *models], (["--model", str(TINY_TEACHER)], "input.model"), "metrics.json"),
        "distill": (["--output", out, *models], (["--set", "train.lr=1e-2"], "train.lr"), "run.json"),
    }


@pytest.mark.parametrize("stage", ["curate", "train", "evaluate", "distill"])
def test_a_rerun_with_other_settings_stops_before_ray_naming_them_unless_restarted(stage, groups, tmp_path, capsys):
    out = tmp_path / "out"
    args, (changed, field), output_file = entry_cases([str(g) for g in groups], str(out))[stage]
    main = entry_point(stage)
    with pytest.raises(ReachedRay):  # a fresh folder
        main(args)
    (out / output_file).write_text("{}")  # what the first run wrote
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ReachedRay):  # the same settings, and one that may change: continues
        main([*args, "--set", "train.report_every=3", "--set", "curate.progress_every_s=2"])

    with pytest.raises(SystemExit) as refused:  # later flags win: the changed settings
        main([*args, *changed])
    message = str(refused.value.code)
    assert message.startswith("error: ") and "\n" not in message and field in message and "--restart" in message
    assert (out / output_file).is_file()

    with pytest.raises(ReachedRay):
        main([*args, *changed, "--restart"])
    assert not (out / output_file).exists() and (out / "notes.txt").read_text() == "mine"
    assert "[restart]" in capsys.readouterr().out
    with pytest.raises(ReachedRay):  # the restarted folder is the new settings'
        main([*args, *changed])
