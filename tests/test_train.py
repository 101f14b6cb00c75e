"""Distillation on Ray Train: FSDP2 over 2 gloo workers, the tiny student, real checkpoints."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from advdistill.config import ExperimentConfig, with_overrides
from advdistill.train.collate import tokenize_group
from advdistill.train.loop import FAIL_AT_STEP_ENV, epoch_order, loss_terms, make_batch, packed_attention
from advdistill.train.model import ResponseLogProbs, param_groups
from advdistill.train.trainer import groups_folder, train

from conftest import TINY_STUDENT
from groups_fixture import write_groups


def train_cfg(base: ExperimentConfig, **train) -> ExperimentConfig:
    settings = {"epochs": 2, "groups_per_step": 4, "num_workers": 2, "val_fraction": 0.0, "checkpoint_every": 2,
                "warmup_ratio": 0.0, "lr": 1e-3, **train}
    return with_overrides(base, {f"train.{key}": value for key, value in settings.items()})


@pytest.fixture(scope="module")
def groups(tmp_path_factory, tiny_tokenizer, tiny_cfg):
    return write_groups(tmp_path_factory.mktemp("groups"), tiny_tokenizer, tiny_cfg, n=24)


@pytest.fixture(scope="module")
def tokenized(groups, tiny_cfg, tiny_tokenizer):
    import pyarrow.parquet as pq

    rows = [r for f in sorted(groups_folder(groups).glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    return sorted(rows, key=lambda r: r["id"])


def mean_loss(model_dir, rows, cfg) -> float:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = ResponseLogProbs(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
                             chunk_size=cfg.train.loss.chunk_size).eval()
    with torch.no_grad():
        losses = [loss_terms(model, make_batch(tokenize_group(r, tokenizer, cfg), cfg, tokenizer.pad_token_id), cfg)["loss"].item()
                  for r in rows]
    return sum(losses) / len(losses)


def read_metrics(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def advdistill_run(ray_cluster, groups, tiny_cfg, tmp_path_factory):
    out = tmp_path_factory.mktemp("train-advdistill")
    cfg = train_cfg(tiny_cfg, max_steps=6)
    return out, train(cfg, groups, out), cfg


@pytest.mark.parametrize("mode", ["advdistill", "sft"])
def test_training_lowers_the_loss(mode, advdistill_run, ray_cluster, groups, tokenized, tiny_cfg, tmp_path):
    if mode == "advdistill":
        out, metrics, cfg = advdistill_run
    else:
        out, cfg = tmp_path, train_cfg(tiny_cfg, method="sft", max_steps=6)
        metrics = train(cfg, groups, out)
    assert metrics["step"] == 6 and metrics["mode"] == mode
    assert mean_loss(out / "final", tokenized, cfg) < 0.95 * mean_loss(TINY_STUDENT, tokenized, cfg)
    steps = [m["step"] for m in read_metrics(out)]
    assert steps == list(range(1, 7))


def test_checkpoint_export_loads_in_transformers_and_vllm(advdistill_run, tiny_cfg, closing):
    out, metrics, _ = advdistill_run
    final = out / "final"
    # train.export_dtype "training": the dtype the CPU workers computed in, stated in result.json
    assert metrics["export_dtype"] == json.loads((out / "result.json").read_text())["export_dtype"] == "float32"
    assert json.loads((final / "config.json").read_text())["dtype"] == "float32"
    tokenizer = AutoTokenizer.from_pretrained(final)
    model = AutoModelForCausalLM.from_pretrained(final)
    ids = tokenizer("<think>", return_tensors="pt").input_ids
    assert model.generate(ids, max_new_tokens=4, do_sample=False).shape[1] > ids.shape[1]

    from advdistill.generation.base import GenerationParams
    from advdistill.generation.engines import VLLMEngine

    engine = closing(VLLMEngine(str(final), tiny_cfg.eval.engine))
    [[completion]] = engine.generate(["<|im_start|>user\nTom has 3 apples. He buys 2 more. How many apples does Tom "
                                      "have now?<|im_end|>\n<|im_start|>assistant\n"], GenerationParams(max_tokens=64))
    assert completion.num_tokens > 0 and completion.text


@pytest.mark.parametrize("packed", [False, True], ids=["separate", "packed"])
def test_one_fsdp_step_on_two_workers_equals_one_plain_step(ray_cluster, groups, tokenized, tiny_cfg, tmp_path, packed):
    cfg = train_cfg(tiny_cfg, max_steps=1, groups_per_step=6, shared_prefix_packing=packed)
    metrics = train(cfg, groups, tmp_path)

    # The same step in this process, without FSDP: the step's 6 groups, averaged, through the same
    # packed attention backend as the workers (backends agree to rounding, tests/test_packing.py;
    # Adam's first step turns rounding in near-zero gradients into whole-step differences).
    tokenizer = AutoTokenizer.from_pretrained(TINY_STUDENT)
    model = ResponseLogProbs(AutoModelForCausalLM.from_pretrained(TINY_STUDENT, dtype=torch.float32),
                             chunk_size=cfg.train.loss.chunk_size, packed_attention=packed_attention(cfg, "cpu"))
    optimizer = torch.optim.AdamW(param_groups(model, cfg.train.weight_decay), lr=cfg.train.learning_rate)
    micro = epoch_order(len(tokenized), 0, cfg.train.seed)[:6]
    total = 0.0
    for index in micro:
        batch = make_batch(tokenize_group(tokenized[index], tokenizer, cfg), cfg, tokenizer.pad_token_id)
        loss = loss_terms(model, batch, cfg)["loss"]
        (loss / len(micro)).backward()
        total += loss.item()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm)
    optimizer.step()

    assert metrics["loss"] == pytest.approx(total / len(micro), rel=1e-5)
    assert metrics["grad_norm"] == pytest.approx(grad_norm.item(), rel=1e-4)
    # Adam's first step moves every weight by about lr; near-zero gradients make the last bits of
    # some updates differ, so equality is judged at 1% of the step.
    stepped = AutoModelForCausalLM.from_pretrained(tmp_path / "final", dtype=torch.float32).state_dict()
    for name, value in model.lm.state_dict().items():
        torch.testing.assert_close(stepped[name], value, rtol=0, atol=0.01 * cfg.train.learning_rate, msg=name)


def test_injected_failure_resumes_to_the_same_parameters(advdistill_run, ray_cluster, groups, tmp_path, monkeypatch):
    reference, _, cfg = advdistill_run
    monkeypatch.setenv(FAIL_AT_STEP_ENV, "5")
    metrics = train(cfg, groups, tmp_path)
    assert metrics["step"] == 6
    assert [m["step"] for m in read_metrics(tmp_path)] == list(range(1, 7))  # no step twice, none lost
    starts = [m["resumed_from"] for m in read_metrics(tmp_path)]  # where each step's worker group began
    assert starts[0] == 0 and 0 < starts[-1] < 5 and starts == sorted(starts)
    resumed = AutoModelForCausalLM.from_pretrained(tmp_path / "final").state_dict()
    uninterrupted = AutoModelForCausalLM.from_pretrained(reference / "final").state_dict()
    for name, value in uninterrupted.items():
        torch.testing.assert_close(resumed[name], value, rtol=1e-6, atol=1e-7, msg=name)


def test_a_torn_checkpoint_snapshot_resumes_from_the_newest_complete_checkpoint(advdistill_run, ray_cluster, groups,
                                                                                tmp_path, monkeypatch, capsys):
    """A run stopped at step 5 (checkpoints at 2 and 4), then Ray Train's
    checkpoint_manager_snapshot.json cut mid-file as a killed in-place write leaves it: the rerun
    (max_failures may change on resume) sets the torn file aside, resumes from the step-4
    checkpoint folder and ends with the uninterrupted run's parameters."""
    from advdistill.train.recovery import SNAPSHOT

    reference, _, cfg = advdistill_run
    monkeypatch.setenv(FAIL_AT_STEP_ENV, "5")
    with pytest.raises(Exception, match="injected failure at step 5"):
        train(with_overrides(cfg, {"train.max_failures": 0}), groups, tmp_path)
    monkeypatch.delenv(FAIL_AT_STEP_ENV)
    snapshot = tmp_path / "checkpoints" / SNAPSHOT
    whole = snapshot.read_bytes()
    snapshot.write_bytes(whole[: len(whole) // 2])
    capsys.readouterr()

    metrics = train(cfg, groups, tmp_path)
    assert "resuming from the newest complete checkpoint folder" in capsys.readouterr().out
    assert (tmp_path / "checkpoints" / f"{SNAPSHOT}.broken-1").read_bytes() == whole[: len(whole) // 2]
    assert metrics["step"] == 6
    history = read_metrics(tmp_path)
    assert [m["step"] for m in history] == list(range(1, 7)) and history[-1]["resumed_from"] == 4
    resumed = AutoModelForCausalLM.from_pretrained(tmp_path / "final").state_dict()
    uninterrupted = AutoModelForCausalLM.from_pretrained(reference / "final").state_dict()
    for name, value in uninterrupted.items():
        torch.testing.assert_close(resumed[name], value, rtol=1e-6, atol=1e-7, msg=name)


def teacher_cuts(i: int) -> set[int]:
    """Groups 0, 6, 12, 18: responses 0 and 2 cut at the teacher's limit, so with response 1 wrong
    their first three are all incorrect (kept at curation: response 3 is right); groups 3, 9, 15,
    21: response 0 cut."""
    return {0, 2} if i % 6 == 0 else {0} if i % 3 == 0 else set()


@pytest.fixture(scope="module")
def groups_with_cuts(tmp_path_factory, tiny_tokenizer, tiny_cfg):
    # 23 groups, 4 dropped: 19 trained on, so the epoch's last step has an odd remainder.
    return write_groups(tmp_path_factory.mktemp("groups-with-cuts"), tiny_tokenizer, tiny_cfg, n=23, teacher_cuts=teacher_cuts)


def test_an_epoch_with_an_odd_last_step_on_two_workers_equals_plain_training(ray_cluster, groups_with_cuts, tiny_cfg,
                                                                             tmp_path):
    """SPEC §5-6 end to end: K' = 3 drops the groups whose first three responses are all wrong
    (counted), max_seq_len cuts are counted in metrics.jsonl and result.json, an optimizer step
    takes 4 groups on 2 workers, the epoch's last step takes the 3 remaining groups (one worker
    pads with a weight-0 group: the only padding the config allows), and the whole epoch equals
    plain single-process training."""
    cfg = train_cfg(tiny_cfg, epochs=1, groups_per_step=4, responses_per_group=3, max_seq_len=120, checkpoint_every=100)
    result = train(cfg, groups_with_cuts, tmp_path)

    import pyarrow.parquet as pq

    rows = sorted((r for f in sorted(groups_folder(groups_with_cuts).glob("*.parquet")) for r in pq.read_table(f).to_pylist()),
                  key=lambda r: r["id"])
    tokenizer = AutoTokenizer.from_pretrained(TINY_STUDENT)
    tokenized = [tokenize_group(r, tokenizer, cfg) for r in rows]
    kept = [g for g in tokenized if g["keep"]]
    assert all(r["keep"] for r in rows) and len(kept) == 19  # 4 groups dropped by the K' = 3 keep rule
    cut = sum(g["truncated_responses"] for g in kept)
    assert cut > 0
    assert {k: result[k] for k in ("train_groups", "val_groups", "val_fraction", "groups_per_step", "dropped_groups",
                                   "truncated_responses", "truncated_groups")} == {
        "train_groups": 19, "val_groups": 0, "val_fraction": 0.0, "groups_per_step": 4, "dropped_groups": 4,
        "truncated_responses": cut, "truncated_groups": sum(g["truncated_responses"] > 0 for g in kept)}
    history = read_metrics(tmp_path)
    assert [m["groups"] for m in history] == [4] * 4 + [3]  # ceil(19 / 4) steps: no group skipped
    assert sum(m["truncated_responses"] for m in history) == cut and result["step"] == 5

    # The same epoch in this process, without FSDP: each step's groups, averaged.
    from transformers import get_cosine_schedule_with_warmup

    model = ResponseLogProbs(AutoModelForCausalLM.from_pretrained(TINY_STUDENT, dtype=torch.float32),
                             chunk_size=cfg.train.loss.chunk_size,
                             packed_attention=packed_attention(cfg, "cpu"))  # the workers' backend
    optimizer = torch.optim.AdamW(param_groups(model, cfg.train.weight_decay), lr=cfg.train.learning_rate)
    scheduler = get_cosine_schedule_with_warmup(optimizer, 0, 5)
    order = epoch_order(len(kept), 0, cfg.train.seed)
    for step in range(5):
        groups = order[4 * step : 4 * step + 4]
        total = 0.0
        for index in groups:
            loss = loss_terms(model, make_batch(kept[index], cfg, tokenizer.pad_token_id), cfg)["loss"]
            (loss / len(groups)).backward()
            total += loss.item()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        assert history[step]["loss"] == pytest.approx(total / len(groups), rel=1e-4), step
        assert history[step]["grad_norm"] == pytest.approx(grad_norm.item(), rel=1e-3), step
    stepped = AutoModelForCausalLM.from_pretrained(tmp_path / "final", dtype=torch.float32).state_dict()
    # As in the one-step test: equal within 1% of one Adam step (measured: 0.3% after 7 steps of 3 groups).
    for name, value in model.lm.state_dict().items():
        torch.testing.assert_close(stepped[name], value, rtol=0, atol=0.01 * cfg.train.learning_rate, msg=name)
