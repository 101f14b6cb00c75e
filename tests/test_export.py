"""Curated groups exported for the rest of the ecosystem (issue 29.3): `ray_jobs/export.py` writes
each format as Parquet plus a dataset card that `datasets.load_dataset` reads, and TRL's own
trainers (SFT, DPO, GRPO) prepare it and take a step on the tiny student — no conversion."""

from __future__ import annotations

import importlib.util
import json

import pyarrow.parquet as pq
import pytest

from conftest import REPO, TINY_STUDENT
from groups_fixture import write_groups

from advdistill.config import dump_config
from advdistill.curate.export import DATA_FILE


def export_main(argv: list[str]) -> dict:
    spec = importlib.util.spec_from_file_location("export_entry_point", REPO / "ray_jobs" / "export.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


@pytest.fixture(scope="module")
def curated(tmp_path_factory, tiny_tokenizer, tiny_cfg):
    """A curation folder: 6 groups of 4 scored responses (right, wrong, short, off-template) and the
    config it ran with."""
    folder = write_groups(tmp_path_factory.mktemp("curate"), tiny_tokenizer, tiny_cfg, n=6)
    (folder / "config.yaml").write_text(dump_config(tiny_cfg))
    groups = pq.read_table(folder / "groups").to_pylist()
    return folder, groups


@pytest.fixture(scope="module")
def exported(curated, tmp_path_factory):
    folder, _ = curated
    out = tmp_path_factory.mktemp("export")
    counts = {fmt: export_main(["--groups", str(folder), "--format", fmt, "--output", str(out / fmt)])
              for fmt in ("sft", "preference", "rewarded")}
    return out, counts


def load(path):
    from datasets import load_dataset

    return load_dataset(str(path), split="train")


def test_sft_rows_are_each_groups_best_correct_response(curated, exported, tiny_cfg):
    _, groups = curated
    out, counts = exported
    rows = load(out / "sft")
    assert rows.column_names == ["id", "prompt", "completion"] and counts["sft"]["rows"] == len(groups)
    by_id = {g["id"]: g for g in groups}
    for row in rows:
        group = by_id[row["id"]]
        best = max((i for i, ok in enumerate(group["correct"]) if ok), key=lambda i: group["rewards"][i])
        assert row["completion"] == [{"role": "assistant", "content": group["responses"][best]}]
        assert row["prompt"] == [{"role": "system", "content": tiny_cfg.prompt.system_prompt},
                                 {"role": "user", "content": group["question"]}]


def test_preference_pairs_a_correct_and_an_incorrect_response_of_the_same_group(curated, exported):
    _, groups = curated
    out, _ = exported
    rows = load(out / "preference")
    assert rows.column_names == ["id", "prompt", "chosen", "rejected"]
    assert len(rows) == sum(min(sum(g["correct"]), len(g["correct"]) - sum(g["correct"])) for g in groups)
    by_id = {g["id"]: g for g in groups}
    for row in rows:
        group = by_id[row["id"]]
        verdict = dict(zip(group["responses"], group["correct"]))
        assert verdict[row["chosen"][0]["content"]] and not verdict[row["rejected"][0]["content"]]


def test_rewarded_keeps_every_sample_with_its_reward_and_advantage(curated, exported):
    _, groups = curated
    out, _ = exported
    rows = {r["id"]: r for r in load(out / "rewarded")}
    assert len(rows) == len(groups)
    for group in groups:
        row = rows[group["id"]]
        assert (row["responses"], row["correct"], row["reference"]) == (group["responses"], group["correct"],
                                                                         group["reference"])
        assert row["rewards"] == pytest.approx(group["rewards"]) and row["advantages"] == pytest.approx(group["advantages"])


def test_the_dataset_card_states_teacher_sampling_verifier_and_counts(exported, tiny_cfg):
    out, counts = exported
    card = (out / "preference" / "README.md").read_text()
    front = card.split("---")[1]
    assert "path: train.parquet" in front and "split: train" in front
    # The license the Hub reads, from the card module the run's own cards use (advdistill.cards): the
    # embedded teacher on the built-in generator's questions is this repository's work.
    assert "license: apache-2.0" in front
    s = tiny_cfg.curate.sampling
    for needle in (f"**Teacher**: `{tiny_cfg.teacher}`, {s.n} samples per prompt, temperature {s.temperature}",
                   "answer kind `number`: numeric equality", f"{counts['preference']['rows']} rows from",
                   "correct responses from the highest reward down paired with incorrect ones", "DPOTrainer"):
        assert needle in card
    assert json.loads(json.dumps(counts))  # what the entry point prints


def test_a_folder_that_is_no_curation_is_one_line(tmp_path):
    with pytest.raises(SystemExit, match="is not a curation folder"):
        export_main(["--groups", str(tmp_path), "--format", "sft", "--output", str(tmp_path / "out")])


# ------------------------------------------------------------------ TRL's trainers take them as they are

STEP = {"max_steps": 1, "per_device_train_batch_size": 2, "report_to": [], "use_cpu": True, "save_strategy": "no"}


@pytest.mark.slow
def test_trl_sft_trainer_takes_the_sft_export(exported, tmp_path, tiny_tokenizer):
    from trl import SFTConfig, SFTTrainer

    trainer = SFTTrainer(model=str(TINY_STUDENT), processing_class=tiny_tokenizer, train_dataset=load(exported[0] / "sft"),
                         args=SFTConfig(output_dir=str(tmp_path), max_length=256, **STEP))
    assert "input_ids" in trainer.train_dataset.column_names  # TRL applied the chat template and tokenized
    assert trainer.train().global_step == 1


@pytest.mark.slow
def test_trl_dpo_trainer_takes_the_preference_export(exported, tmp_path, tiny_tokenizer):
    from trl import DPOConfig, DPOTrainer

    trainer = DPOTrainer(model=str(TINY_STUDENT), processing_class=tiny_tokenizer,
                         train_dataset=load(exported[0] / "preference"),
                         args=DPOConfig(output_dir=str(tmp_path), max_length=256, **STEP))
    assert trainer.train().global_step == 1


@pytest.mark.slow
def test_trl_grpo_trainer_takes_the_rewarded_export_as_its_prompts(exported, tmp_path, tiny_tokenizer):
    """The prompts are GRPO's; the other columns reach its reward functions by name (a correctness
    reward reads `reference`)."""
    from trl import GRPOConfig, GRPOTrainer

    seen: dict[str, list] = {}

    def correctness(prompts, completions, reference, responses, rewards, advantages, **_) -> list[float]:
        seen.update(reference=reference, rewards=rewards)
        return [1.0 if ref in text[0]["content"] else 0.0 for ref, text in zip(reference, completions)]

    trainer = GRPOTrainer(model=str(TINY_STUDENT), processing_class=tiny_tokenizer, reward_funcs=correctness,
                          train_dataset=load(exported[0] / "rewarded"),
                          args=GRPOConfig(output_dir=str(tmp_path), num_generations=2, max_completion_length=8, **STEP))
    assert trainer.train().global_step == 1
    assert seen["reference"] and all(len(r) == 4 for r in seen["rewards"])
