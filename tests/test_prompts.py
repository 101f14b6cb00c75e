"""SPEC §2 prompts, rendered with a real tokenizer chat template (the embedded tiny model's)."""

import json

import pytest

from advdistill.config import DEFAULT_SYSTEM_PROMPT, PromptConfig
from advdistill.prompts import build_messages, build_prompt, exemplars_for, format_question, render_prompt

MATH = {"id": "q1", "task": "gsm8k", "question": "What is 2 + 3?", "reference": "5", "choices": None}
MC = {"id": "q2", "task": "mmlu_pro", "question": "Pick one.", "reference": "B", "choices": ["x", "y", "z"]}


def test_zero_shot_messages():
    messages = build_messages(MATH)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[0]["content"] == DEFAULT_SYSTEM_PROMPT
    assert "<think>" in messages[0]["content"] and "\\boxed{}" in messages[0]["content"]
    assert messages[1]["content"] == "What is 2 + 3?"


def test_k_shot_adds_exemplar_turns_in_the_template():
    messages = build_messages(MATH, few_shot=4)
    assert [m["role"] for m in messages] == ["system"] + ["user", "assistant"] * 4 + ["user"]
    for m in messages[2:-1:2]:
        assert m["content"].startswith("<think>") and "\\boxed{" in m["content"]


def test_multiple_choice_lists_lettered_options_and_uses_mc_exemplars():
    assert format_question(MC["question"], MC["choices"]) == "Pick one.\n\nOptions:\nA. x\nB. y\nC. z"
    messages = build_messages(MC, few_shot=2)
    assert "J. " in messages[1]["content"]  # exemplars have ten options
    with pytest.raises(ValueError):
        format_question("q", [str(i) for i in range(11)])


def test_exemplars_from_file(tmp_path):
    path = tmp_path / "ex.jsonl"
    path.write_text(json.dumps({"question": "1+1?", "response": "<think>2</think><answer>\\boxed{2}</answer>"}) + "\n")
    assert exemplars_for("gsm8k", 1, str(path))[0]["question"] == "1+1?"
    with pytest.raises(ValueError):
        exemplars_for("gsm8k", 2, str(path))


def test_render_with_chat_template_and_without(tiny_tokenizer):
    text = build_prompt(tiny_tokenizer, MATH, few_shot=1, prompt_cfg=PromptConfig(system_prompt="S"))
    assert text.startswith("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n")
    assert text.endswith("What is 2 + 3?<|im_end|>\n<|im_start|>assistant\n")

    class Plain:
        chat_template = None

    plain = render_prompt(Plain(), build_messages(MATH, system_prompt=""))
    assert plain == "User: What is 2 + 3?\n\nAssistant:"
