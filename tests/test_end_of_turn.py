"""Generation stops at the end of the model's turn (SPEC §3): the chat template's end-of-turn token
as well as the tokenizer's EOS. Qwen2.5 *base* models' EOS is `<|endoftext|>` while their chat
turns end with `<|im_end|>`; the embedded tiny models hide the difference (their EOS is
`<|im_end|>`), so these tests build a copy of the tiny teacher whose tokenizer and configs say
EOS = `<|endoftext|>` while the weights still end each turn with `<|im_end|>`."""

import json
import shutil

import pytest
from transformers import AutoTokenizer

from advdistill.data.synthetic import make_split
from advdistill.prompts import build_prompt, end_of_turn_token_ids
from advdistill.generation.base import GenerationParams
from advdistill.generation.engines import HFEngine, VLLMEngine

from conftest import TINY_TEACHER

ENDOFTEXT, IM_END = "<|endoftext|>", "<|im_end|>"
MAX_TOKENS = 256  # the tiny teacher answers in ~40-110 tokens


def make_base_like(folder):
    """The tiny teacher with Qwen2.5-base-style EOS: `<|endoftext|>` in the tokenizer, config.json
    and generation_config.json."""
    shutil.copytree(TINY_TEACHER, folder)
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer_config["eos_token"] = ENDOFTEXT
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    endoftext_id = AutoTokenizer.from_pretrained(TINY_TEACHER).convert_tokens_to_ids(ENDOFTEXT)
    for name in ("config.json", "generation_config.json"):
        config = json.loads((folder / name).read_text())
        config["eos_token_id"] = endoftext_id
        (folder / name).write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def base_like_teacher(tmp_path_factory):
    return make_base_like(tmp_path_factory.mktemp("base-like") / "teacher")


@pytest.fixture(scope="module")
def prompts(base_like_teacher, tiny_cfg):
    tokenizer = AutoTokenizer.from_pretrained(base_like_teacher)
    return [build_prompt(tokenizer, r, few_shot=0, prompt_cfg=tiny_cfg.prompt) for r in make_split("test", 2, seed=0)]


# ------------------------------------------------------------------ the pure function


def test_end_of_turn_comes_from_the_chat_template_then_eos(tiny_tokenizer, base_like_teacher):
    im_end, endoftext = tiny_tokenizer.convert_tokens_to_ids([IM_END, ENDOFTEXT])
    assert end_of_turn_token_ids(tiny_tokenizer) == (im_end,)  # EOS is the end-of-turn token there
    base = AutoTokenizer.from_pretrained(base_like_teacher)
    assert base.eos_token == ENDOFTEXT
    assert end_of_turn_token_ids(base) == (im_end, endoftext)


def test_end_of_turn_falls_back_to_eos(tiny_tokenizer):
    class NoTemplate:  # a plain `role: content` transcript has no end-of-turn token
        chat_template = None
        eos_token_id = 7

    assert end_of_turn_token_ids(NoTemplate()) == (7,)

    plain_turns = AutoTokenizer.from_pretrained(TINY_TEACHER)
    plain_turns.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n\n{% endfor %}"
    assert end_of_turn_token_ids(plain_turns) == (tiny_tokenizer.eos_token_id,)  # no special token after the turn


# ------------------------------------------------------------------ both engines


def test_transformers_engine_stops_at_the_end_of_turn(base_like_teacher, prompts, tiny_cfg):
    engine = HFEngine(str(base_like_teacher), tiny_cfg.eval.engine)
    params = GenerationParams(max_tokens=MAX_TOKENS)
    outputs = [outs[0] for outs in engine.generate(prompts, params)]
    assert all(o.finish_reason == "stop" and o.num_tokens < MAX_TOKENS / 2 for o in outputs), outputs
    assert all(IM_END not in o.text and "<|im_start|>" not in o.text for o in outputs)

    # The case this guards: stopping at the tokenizer's EOS alone runs on into invented turns.
    engine.eos_ids = {engine.tokenizer.eos_token_id}
    cut = [outs[0] for outs in engine.generate(prompts, params)]
    assert all(o.finish_reason == "length" and o.num_tokens == MAX_TOKENS for o in cut), cut


def test_vllm_engine_stops_at_the_end_of_turn(base_like_teacher, prompts, tiny_cfg, closing):
    engine = closing(VLLMEngine(str(base_like_teacher), tiny_cfg.eval.engine))
    assert engine.tokenizer.eos_token == ENDOFTEXT
    outputs = [outs[0] for outs in engine.generate(prompts, GenerationParams(max_tokens=MAX_TOKENS))]
    assert all(o.finish_reason == "stop" and o.num_tokens < MAX_TOKENS / 2 for o in outputs), outputs
    assert all(IM_END not in o.text for o in outputs)
    # Without the end-of-turn stop, vLLM stops only at EOS: the responses run to the limit.
    stops, engine.stop_token_ids = engine.stop_token_ids, []
    cut = [outs[0] for outs in engine.generate(prompts, GenerationParams(max_tokens=MAX_TOKENS))]
    assert all(o.finish_reason == "length" and o.num_tokens == MAX_TOKENS for o in cut), cut
    engine.stop_token_ids = stops
    # Fixed-length benchmarks (ignore_eos) still generate max_tokens: the end-of-turn stop is lifted too.
    [[fixed]] = engine.generate(prompts[:1], GenerationParams(max_tokens=MAX_TOKENS, ignore_eos=True))
    assert fixed.num_tokens == MAX_TOKENS and fixed.finish_reason == "length"
