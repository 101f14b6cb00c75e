"""LoRA students (`train.lora`, peft) on the real path: Ray Train, FSDP2 over 2 gloo workers, the
AdvDistill loss, sharded checkpoints, the merged export that vLLM loads.

Shown: only the adapters change (every weight outside the target modules is bit-identical to
the base, and the base weights inside them are restored by subtracting the adapters' update);
the merged export gives the same log-probs as base + adapter; a run that fails and resumes ends
with the same parameters as an uninterrupted one; and the export evaluates end to end, in
process and through the command-line entry points (`--set train.lora.r=8`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from advdistill.config import DatasetConfig, with_overrides
from advdistill.train.collate import tokenize_group
from advdistill.train.lora import ADAPTER
from advdistill.train.loop import FAIL_AT_STEP_ENV, loss_terms, make_batch
from advdistill.train.model import ResponseLogProbs
from advdistill.train.trainer import groups_folder, train

from conftest import REPO, TINY_STUDENT
from groups_fixture import write_groups

pytestmark = pytest.mark.slow
LORA = {"train.lora.r": 8, "train.lora.alpha": 16.0, "train.lora.target_modules": ["q_proj", "v_proj", "down_proj"]}


def lora_cfg(base, **extra):
    settings = {"train.epochs": 1, "train.groups_per_step": 4, "train.num_workers": 2, "train.val_fraction": 0.0,
                "train.checkpoint_every": 2, "train.warmup_ratio": 0.0, "train.lr": 5e-3, "train.max_steps": 4,
                "train.resources.cpus_per_worker": 1, **LORA, **extra}
    return with_overrides(base, settings)


@pytest.fixture(scope="module")
def groups(tmp_path_factory, tiny_tokenizer, tiny_cfg):
    return write_groups(tmp_path_factory.mktemp("lora-groups"), tiny_tokenizer, tiny_cfg, n=16)


@pytest.fixture(scope="module")
def lora_run(ray_cluster, groups, tiny_cfg, tmp_path_factory):
    out = tmp_path_factory.mktemp("train-lora")
    cfg = lora_cfg(tiny_cfg)
    return out, train(cfg, groups, out), cfg


def test_only_the_adapters_change(lora_run):
    out, metrics, _ = lora_run
    assert metrics["step"] == 4
    base = AutoModelForCausalLM.from_pretrained(TINY_STUDENT).state_dict()
    merged = AutoModelForCausalLM.from_pretrained(out / "final").state_dict()
    assert set(merged) == set(base)
    targets = [n for n in base if any(f".{t}." in n for t in LORA["train.lora.target_modules"]) and n.endswith("weight")]
    assert targets
    for name, value in base.items():
        if name in targets:
            continue
        assert torch.equal(merged[name], value), f"{name} changed, but only adapters train"
    # Inside the targets, merged = base + (alpha / r) B A: subtracting the saved adapter's update
    # gives the base weight back, and the update is not zero (the adapters did train).
    from safetensors.torch import load_file

    adapter = load_file(out / "final" / ADAPTER / "adapter_model.safetensors")
    scale = LORA["train.lora.alpha"] / LORA["train.lora.r"]
    for name in targets:
        stem = name.removesuffix(".weight")
        a = next(v for k, v in adapter.items() if k.endswith(f"{stem}.lora_A.weight"))
        b = next(v for k, v in adapter.items() if k.endswith(f"{stem}.lora_B.weight"))
        update = scale * b @ a
        assert update.abs().max() > 0, name
        torch.testing.assert_close(merged[name] - update, base[name], rtol=1e-5, atol=1e-6)


def test_merged_export_has_the_adapter_models_log_probs(lora_run, groups, tiny_cfg):
    import pyarrow.parquet as pq
    from peft import PeftModel

    out, _, cfg = lora_run
    tokenizer = AutoTokenizer.from_pretrained(out / "final")
    rows = [r for f in sorted(groups_folder(groups).glob("*.parquet")) for r in pq.read_table(f).to_pylist()][:4]
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(TINY_STUDENT), out / "final" / ADAPTER)
    models = {"adapter": adapted.base_model.model, "merged": AutoModelForCausalLM.from_pretrained(out / "final")}
    losses = {}
    for name, lm in models.items():
        model = ResponseLogProbs(lm.eval(), chunk_size=cfg.train.loss.chunk_size)
        with torch.no_grad():
            losses[name] = [loss_terms(model, make_batch(tokenize_group(r, tokenizer, cfg), cfg,
                                                         tokenizer.pad_token_id), cfg)["loss"].item() for r in rows]
    assert losses["adapter"] == pytest.approx(losses["merged"], rel=1e-5, abs=1e-6)


def test_a_resumed_lora_run_ends_with_the_same_parameters(lora_run, groups, tmp_path, monkeypatch):
    reference, _, cfg = lora_run
    monkeypatch.setenv(FAIL_AT_STEP_ENV, "3")
    metrics = train(cfg, groups, tmp_path)
    assert metrics["step"] == 4
    resumed = AutoModelForCausalLM.from_pretrained(tmp_path / "final").state_dict()
    uninterrupted = AutoModelForCausalLM.from_pretrained(reference / "final").state_dict()
    for name, value in uninterrupted.items():
        torch.testing.assert_close(resumed[name], value, rtol=1e-6, atol=1e-7, msg=name)


def test_the_lora_export_evaluates(lora_run, tiny_cfg, tmp_path):
    from advdistill.evaluation.evaluator import evaluate

    out, _, _ = lora_run
    metrics = evaluate(tiny_cfg, str(out / "final"), DatasetConfig(name="synthetic", split="test", limit=8), tmp_path)
    assert metrics["n"] == 8 and 0 <= metrics["accuracy"] <= 1


def test_the_command_line_trains_exports_and_evaluates_a_lora_student(ray_cluster, groups, tmp_path):
    """Issue 17's "done when", as a user types it: `ray_jobs/train.py --set train.lora.r=8`, then
    `ray_jobs/evaluate.py` on its `final/`, each a driver joined to the running cluster."""
    env = dict(os.environ, RAY_ADDRESS=ray_cluster.address)

    def entry_point(script: str, *args: str) -> None:
        done = subprocess.run([sys.executable, str(REPO / "ray_jobs" / script), *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{script} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"

    out = tmp_path / "train"
    entry_point("train.py", "--groups", str(groups), "--output", str(out), "--set", f"student={TINY_STUDENT}",
                "--set", "train.lora.r=8", "--set", "train.epochs=1", "--set", "train.val_fraction=0.0",
                "--set", "train.max_steps=2")
    assert (out / "final" / ADAPTER / "adapter_model.safetensors").is_file()
    merged = AutoModelForCausalLM.from_pretrained(out / "final")  # a plain transformers folder
    assert not any("lora_" in name for name in merged.state_dict())
    entry_point("evaluate.py", "--model", str(out / "final"), "--dataset", "synthetic", "--split", "test",
                "--limit", "8", "--output", str(tmp_path / "eval"))
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["n"] == 8 and 0 <= metrics["accuracy"] <= 1
