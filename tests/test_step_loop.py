"""The continuously fed vLLM engine (`generation.step_loop`): calls from several threads share one
running engine and get exactly what one blocking `LLM.generate` gives for the same seeds; a bad
call fails alone; a broken engine fails its waiting calls instead of hanging them."""

from concurrent.futures import ThreadPoolExecutor

import pytest
from transformers import AutoTokenizer

from advdistill.data.synthetic import make_split
from advdistill.generation.base import GenerationParams
from advdistill.generation.engines import VLLMEngine
from advdistill.generation.rows import prompt_seed
from advdistill.generation.step_loop import EngineLoopError
from advdistill.prompts import build_prompt

from conftest import TINY_TEACHER

PARAMS = GenerationParams(n=4, temperature=0.9, max_tokens=96)


@pytest.fixture(scope="module")
def engine(tiny_cfg):
    return VLLMEngine(str(TINY_TEACHER), tiny_cfg.curate.engine, continuous=True)


@pytest.fixture(scope="module")
def prompts_and_seeds(tiny_cfg):
    tokenizer = AutoTokenizer.from_pretrained(TINY_TEACHER)
    records = make_split("test", 24, seed=3)
    prompts = [build_prompt(tokenizer, r, few_shot=0, prompt_cfg=tiny_cfg.prompt) for r in records]
    return prompts, [prompt_seed(7, r["id"]) for r in records]


def texts(outputs):
    return [[c.text for c in per_prompt] for per_prompt in outputs]


def test_concurrent_calls_give_what_one_blocking_generate_gives(engine, prompts_and_seeds):
    prompts, seeds = prompts_and_seeds
    # The same engine, bypassing the loop (idle between calls, so nothing else touches it).
    loop, engine.step_loop = engine.step_loop, None
    try:
        blocking = engine.generate(prompts, PARAMS, seeds)
    finally:
        engine.step_loop = loop
    # Three callers at once, with interleaved slices, so their requests share engine steps.
    slices = [slice(0, 24, 3), slice(1, 24, 3), slice(2, 24, 3)]
    with ThreadPoolExecutor(3) as pool:
        parts = list(pool.map(lambda s: engine.generate(prompts[s], PARAMS, seeds[s]), slices))
    continuous = [None] * len(prompts)
    for s, part in zip(slices, parts):
        continuous[s] = part
    assert texts(continuous) == texts(blocking)
    assert sum(len(c) for c in continuous) == 24 * PARAMS.n
    assert {c.finish_reason for per in continuous for c in per} <= {"stop", "length"}


def test_a_bad_call_fails_alone(engine, prompts_and_seeds, tiny_cfg):
    prompts, seeds = prompts_and_seeds
    too_long = "x " * (tiny_cfg.curate.engine.max_model_len * 2)
    with ThreadPoolExecutor(2) as pool:
        good = pool.submit(engine.generate, prompts[:6], PARAMS, seeds[:6])
        bad = pool.submit(engine.generate, [too_long], PARAMS, [1])
        with pytest.raises(Exception, match="(?i)length|long|context|token"):
            bad.result(timeout=120)
        assert len(good.result(timeout=120)) == 6
    assert len(engine.generate(prompts[:2], PARAMS, seeds[:2])) == 2  # and the engine goes on


def test_a_closed_loop_refuses_calls_instead_of_hanging(tiny_cfg, prompts_and_seeds):
    prompts, seeds = prompts_and_seeds
    engine = VLLMEngine(str(TINY_TEACHER), tiny_cfg.curate.engine, continuous=True)
    engine.step_loop.close()
    with pytest.raises(EngineLoopError):
        engine.generate(prompts[:1], PARAMS, seeds[:1])
