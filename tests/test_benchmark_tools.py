"""What the throughput benchmarks rely on: a real architecture with random weights (vLLM
`load_format=dummy`, no checkpoint) and fixed output lengths (`ignore_eos`)."""

import json
import sys

import pytest

from advdistill.config import EngineConfig
from advdistill.generation.base import GenerationParams
from advdistill.generation.engines import HFEngine, VLLMEngine

from conftest import REPO, TINY_TEACHER

sys.path.insert(0, str(REPO / "bench"))
import random_teacher  # noqa: E402


def test_random_teacher_has_qwen_dimensions_and_the_tiny_tokenizer(tmp_path):
    folder = random_teacher.write("qwen2.5-7b", tmp_path / "teacher")
    config = json.loads((folder / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]) == (3584, 28, 152064)
    assert (folder / "tokenizer.json").is_file() and not (folder / "model.safetensors").exists()


def test_vllm_random_weights_generate_fixed_lengths(tmp_path, closing):
    folder = random_teacher.write("smoke", tmp_path / "teacher")  # Qwen2.5's vocabulary, beyond the tokenizer's
    engine = closing(VLLMEngine(str(folder), EngineConfig(max_model_len=256, load_format="dummy")))
    outputs = engine.generate(["2 + 2 =", "Tom has 3 apples."], GenerationParams(n=3, temperature=0.9, max_tokens=24,
                                                                                 ignore_eos=True), seeds=[1, 2])
    assert [len(outs) for outs in outputs] == [3, 3]
    assert all(o.num_tokens == 24 and o.finish_reason == "length" and isinstance(o.text, str)
               for outs in outputs for o in outs)


def test_transformers_engine_ignore_eos_and_no_dummy_weights(tiny_cfg, tiny_tokenizer):
    engine = HFEngine(str(TINY_TEACHER), tiny_cfg.curate.engine)
    [outs] = engine.generate(["Tom has 3 apples."], GenerationParams(n=2, temperature=0.9, max_tokens=300, ignore_eos=True),
                             seeds=[0])
    assert [o.num_tokens for o in outs] == [300, 300]  # the tiny teacher stops after ~50 tokens otherwise
    with pytest.raises(ValueError, match="dummy"):
        HFEngine(str(TINY_TEACHER), EngineConfig(load_format="dummy"))
