"""The training contract of SPEC §5–6, as pure functions (milliseconds, no Ray): the keep rule
re-applied for K' responses, the end-of-turn token only after responses the teacher ended,
truncations at max_seq_len counted, a fixed number of groups per optimizer step whatever the
worker count, no group skipped, and the report stating all of it. The 2-worker FSDP step is in
tests/test_train.py."""

import math

import pytest
import torch
from transformers import AutoTokenizer, GenerationConfig

from advdistill.config import ExperimentConfig, with_overrides
from advdistill.report.tables import training_table
from advdistill.scoring import group_advantages, score_group
from advdistill.train.checkpointing import with_end_of_turn_stops
from advdistill.train.collate import response_token_ids, select_responses, tokenize_group
from advdistill.train.loop import epoch_order, step_groups, steps_per_epoch, worker_micro_batches
from advdistill.train.trainer import training_contract

from conftest import TINY_STUDENT

RECORD = {"id": "g1", "task": "synthetic", "question": "Tom has 3 apples. He buys 2 more. How many apples does Tom have now?",
          "reference": "5", "choices": None}
RIGHT = "<think>\n3 + 2 = 5.\n</think>\n<answer>\n\\boxed{5}\n</answer>"
WRONG = "<think>\n3 + 2 = 6.\n</think>\n<answer>\n\\boxed{6}\n</answer>"


def group_row(responses, finish_reasons=None, record=RECORD, lengths=None):
    finish_reasons = finish_reasons or ["stop"] * len(responses)
    lengths = lengths or [40] * len(responses)
    scored = score_group(responses, lengths, finish_reasons, record["reference"], record["task"])
    return {**record, "responses": responses, "token_lengths": lengths, "finish_reasons": finish_reasons, **scored}


def with_train(cfg: ExperimentConfig, **train) -> ExperimentConfig:
    return with_overrides(cfg, {f"train.{key}": value for key, value in train.items()})


@pytest.fixture(scope="module")
def base_like_tokenizer():
    """The student's tokenizer with a Qwen2.5-base-style EOS (`<|endoftext|>`) while its chat
    template still ends turns with `<|im_end|>`."""
    tokenizer = AutoTokenizer.from_pretrained(TINY_STUDENT, eos_token="<|endoftext|>")
    assert tokenizer.eos_token_id != tokenizer.convert_tokens_to_ids("<|im_end|>")
    return tokenizer


# ------------------------------------------------------------------ K' < K: the keep rule again


def test_three_response_ablation_drops_groups_whose_first_three_are_wrong(tiny_cfg, tiny_tokenizer):
    row = group_row([WRONG, WRONG, WRONG, RIGHT] + [WRONG] * 4)
    assert row["keep"]  # kept at curation: one of the 8 is right
    for mode in ("advdistill", "sft"):
        cfg = with_train(tiny_cfg, responses_per_group=3, method=mode)
        assert select_responses(row, cfg)["keep"] is False
        assert tokenize_group(row, tiny_tokenizer, cfg)["keep"] is False
    assert select_responses(row, with_train(tiny_cfg, responses_per_group=4))["keep"] is True
    assert select_responses(row, tiny_cfg)["keep"] is True  # all K


def test_three_response_ablation_recomputes_advantages_on_the_first_three(tiny_cfg):
    row = group_row([RIGHT, WRONG, WRONG] + [RIGHT] * 5)
    chosen = select_responses(row, with_train(tiny_cfg, responses_per_group=3))
    assert chosen["keep"] and chosen["correct"] == [True, False, False]
    expected = group_advantages(row["rewards"][:3], tiny_cfg.advantage)
    assert chosen["advantages"] == pytest.approx(expected.tolist())
    assert chosen["finish_reasons"] == ["stop"] * 3


# ------------------------------------------------------------------ the end of a response


def test_a_response_cut_at_the_teachers_limit_gets_no_end_token(tiny_cfg, base_like_tokenizer):
    row = group_row([RIGHT, WRONG, RIGHT], finish_reasons=["stop", "length", "stop"])
    group = tokenize_group(row, base_like_tokenizer, tiny_cfg)
    im_end = base_like_tokenizer.convert_tokens_to_ids("<|im_end|>")
    encoded = base_like_tokenizer([RIGHT, WRONG, RIGHT], add_special_tokens=False)["input_ids"]
    # The teacher ended responses 0 and 2: the student's end-of-turn token (not its EOS) follows.
    assert group["response_ids"][0] == encoded[0] + [im_end]
    assert group["response_ids"][2] == encoded[2] + [im_end]
    # Response 1 was cut at the teacher's token limit: nothing is appended.
    assert group["response_ids"][1] == encoded[1]
    assert base_like_tokenizer.eos_token_id not in sum(group["response_ids"], [])


def test_sft_target_keeps_its_finish_reason(tiny_cfg, tiny_tokenizer):
    row = group_row([WRONG, RIGHT], finish_reasons=["length", "stop"])
    group = tokenize_group(row, tiny_tokenizer, with_train(tiny_cfg, method="sft"))
    assert len(group["response_ids"]) == 1 and group["response_ids"][0][-1] == tiny_tokenizer.eos_token_id


# ------------------------------------------------------------------ cuts at max_seq_len


def test_cuts_at_max_seq_len_are_counted():
    ids, truncated = response_token_ids([[1, 2, 3], [4, 5], [6]], ["stop", "length", "stop"], end_of_turn_id=9, budget=3)
    assert ids == [[1, 2, 3], [4, 5], [6, 9]]
    assert truncated == [True, False, False]  # [1, 2, 3, 9] lost its end-of-turn token


def test_tokenized_group_reports_its_truncations(tiny_cfg, tiny_tokenizer):
    row = group_row([RIGHT, "<think>" + "1 + 1 = 2. " * 60 + "</think>", WRONG])
    prompt_len = len(tokenize_group(row, tiny_tokenizer, tiny_cfg)["prompt_ids"])
    group = tokenize_group(row, tiny_tokenizer, with_train(tiny_cfg, max_seq_len=prompt_len + 40))
    assert group["truncated"] == [False, True, False] and group["truncated_responses"] == 1
    assert len(group["response_ids"][1]) == 40


# ------------------------------------------------------------------ groups per step, epochs


@pytest.mark.parametrize("n_groups, per_step", [(24, 4), (24, 5), (25, 16), (7, 16), (1, 16), (33, 1)])
def test_every_group_is_trained_once_per_epoch(n_groups, per_step):
    """The old floor skipped up to world x accum - 1 groups every epoch."""
    assert steps_per_epoch(n_groups, per_step) == math.ceil(n_groups / per_step)
    order = epoch_order(n_groups, epoch=1, seed=3)
    steps = [step_groups(order, s, per_step) for s in range(steps_per_epoch(n_groups, per_step))]
    assert sorted(g for step in steps for g in step) == list(range(n_groups))
    assert all(len(step) == per_step for step in steps[:-1]) and 0 < len(steps[-1]) <= per_step


@pytest.mark.parametrize("world", [1, 2, 3, 8, 20])
@pytest.mark.parametrize("n", [16, 5, 1])
def test_a_step_is_its_groups_whatever_the_worker_count(world, n):
    groups = list(range(100, 100 + n))
    shares = [worker_micro_batches(groups, rank, world) for rank in range(world)]
    # Every worker runs the same number of forward/backward passes (FSDP collectives) ...
    assert len({len(share) for share in shares}) == 1 and len(shares[0]) == math.ceil(n / world)
    # ... and the weight-1 micro-batches are exactly the step's groups, each once.
    assert sorted(g for share in shares for g, w in share if w == 1.0) == groups
    assert all(w == 0.0 for share in shares for _, w in share if w != 1.0)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_scaled_worker_gradients_average_to_the_mean_over_the_steps_groups(world):
    """The loop's arithmetic: each worker backpropagates weight * W / n per group, FSDP averages
    over W workers, so the step's gradient is the mean over its n groups, padding included."""
    torch.manual_seed(0)
    inputs = torch.randn(5, 3)  # 5 groups: odd, and not a multiple of 2 or 3
    weight = torch.randn(3, requires_grad=True)

    def group_loss(i):
        return (inputs[i] @ weight).sin()

    groups = list(range(5))
    per_worker = []
    for rank in range(world):
        weight.grad = None
        for index, w in worker_micro_batches(groups, rank, world):
            (group_loss(index) * (w * world / len(groups))).backward()
        per_worker.append(weight.grad.clone())
    averaged = torch.stack(per_worker).mean(0)  # what FSDP's reduce-scatter computes
    weight.grad = None
    (sum(group_loss(i) for i in groups) / len(groups)).backward()
    torch.testing.assert_close(averaged, weight.grad)


# ------------------------------------------------------------------ the exported student


def test_exported_student_stops_at_its_end_of_turn(base_like_tokenizer):
    config = with_end_of_turn_stops(GenerationConfig(eos_token_id=base_like_tokenizer.eos_token_id), base_like_tokenizer)
    im_end = base_like_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert config.eos_token_id == [base_like_tokenizer.eos_token_id, im_end]


# ------------------------------------------------------------------ stated in the report


def test_report_states_the_split_the_step_and_the_counts():
    runs = {"advdistill": {"train_groups": 634, "val_groups": 33, "val_fraction": 0.05, "groups_per_step": 4, "step": 318,
                           "responses_per_group": 3, "dropped_groups": 12, "truncated_responses": 7, "truncated_groups": 5,
                           "max_seq_len": 512, "lr": 3e-4, "epochs": 2, "optimizer": "AdamW"},
            "sft": {"train_groups": 646, "val_groups": 33, "val_fraction": 0.05, "groups_per_step": 4, "step": 324,
                    "responses_per_group": None, "dropped_groups": 0, "truncated_responses": 0, "truncated_groups": 0,
                    "max_seq_len": 512, "lr": 1e-3, "epochs": 2, "optimizer": "AdamW"}}
    table = training_table(runs)
    lines = table.splitlines()
    assert "validation groups" in lines[0] and "groups per step" in lines[0] and "max_seq_len" in lines[0]
    assert "learning rate" in lines[0] and "epochs" in lines[0] and "optimizer" in lines[0]
    assert ("| Student AdvDistill | 634 | 33 (5% by id hash) | 4 | 318 | 0.0003 | 2 | AdamW | 3 | 12 "
            "| 7 in 5 groups (max_seq_len 512) |") in lines
    assert ("| Student SFT | 646 | 33 (5% by id hash) | 4 | 324 | 0.001 | 2 | AdamW | all | – "
            "| 0 in 0 groups (max_seq_len 512) |") in lines



def test_training_result_states_the_contract(tiny_cfg):
    cfg = with_train(tiny_cfg, val_fraction=0.25, responses_per_group=3, groups_per_step=4, max_seq_len=300)
    flags = [{"keep": True, "val": False, "truncated_responses": 2}, {"keep": True, "val": False, "truncated_responses": 0},
             {"keep": True, "val": True, "truncated_responses": 1}, {"keep": False, "val": False, "truncated_responses": 5}]
    assert training_contract(flags, cfg) == {
        "train_groups": 2, "val_groups": 1, "val_fraction": 0.25, "groups_per_step": 4, "responses_per_group": 3,
        "dropped_groups": 1, "max_seq_len": 300, "truncated_responses": 2, "truncated_groups": 1,
        "val_truncated_responses": 1, "val_truncated_groups": 1, "skipped_groups": 0, "skipped": [],
        "lr": cfg.train.learning_rate, "epochs": cfg.train.epochs,
        "optimizer": f"AdamW, weight decay {cfg.train.weight_decay:g}, warm-up {cfg.train.warmup_ratio:g}, cosine"}


def test_distill_trains_sft_at_its_own_rate(tiny_cfg):
    """`train.method_lr` sets the SFT trainings' rate (each method's chosen on val); AdvDistill keeps train.lr."""
    from advdistill.config import with_overrides
    from advdistill.run.pipeline import trainings, training_overrides

    cfg = with_overrides(tiny_cfg, {"train.lr": 3e-4, "train.method_lr": {"sft": 1e-3},
                                    "extra_sft_students": ["models/tiny-teacher"]})
    rates = {run.name: with_overrides(cfg, training_overrides(cfg, run)).train.learning_rate for run in trainings(cfg)}
    assert rates == {"advdistill": 3e-4, "sft": 1e-3, "sft@tiny-teacher": 1e-3}
    same = with_overrides(cfg, {"train.method_lr": {}})
    assert {with_overrides(same, training_overrides(same, run)).train.learning_rate for run in trainings(same)} == {3e-4}
