"""The continuously fed vLLM engine (`generation.step_loop`): calls from several threads share one
running engine and get exactly what one blocking `LLM.generate` gives for the same seeds; a bad
call fails alone; a broken engine fails its waiting calls instead of hanging them — a hung step
too (a real engine whose step blocks inside vLLM), and an output whose id matches no request
(a vLLM whose ids changed form). The installed vLLM has what the loop calls; seeding per prompt
repeats its samples, per batch does not."""

import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import pytest
from transformers import AutoTokenizer

from advdistill.data.synthetic import make_split
from advdistill.generation.base import GenerationParams
from advdistill.generation.engines import VLLMEngine, configure_vllm_cpu_env, resolve_dtype
from advdistill.generation.rows import generate_rows, prompt_seed
from advdistill.generation.step_loop import EngineLoopError, RequestIdMismatch, StepLoop
from advdistill.generation.vllm_api import TESTED_VLLM, check_vllm_api
from advdistill.prompts import build_prompt

from conftest import TINY_TEACHER

PARAMS = GenerationParams(n=4, temperature=0.9, max_tokens=96)


@pytest.fixture(scope="module")
def engine(tiny_cfg):
    engine = VLLMEngine(str(TINY_TEACHER), tiny_cfg.curate.engine, continuous=True)
    yield engine
    engine.close()  # a step loop keeps its engine alive: destroyed here, not while a later module's generates


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


def test_an_output_whose_id_matches_no_request_fails_every_call(engine, prompts_and_seeds):
    prompts, seeds = prompts_and_seeds
    llm = engine.llm

    class RenamedIds:
        """vLLM as a release would be whose LLM.enqueue ids no longer take apart into the ids
        its outputs carry."""

        llm_engine = llm.llm_engine

        def enqueue(self, prompts, sampling, use_tqdm=False):
            return [f"req:{request_id}" for request_id in llm.enqueue(prompts, sampling, use_tqdm=use_tqdm)]

    loop = StepLoop(RenamedIds(), stall_timeout_s=60)
    one = GenerationParams(n=1, temperature=0.9, max_tokens=8)
    try:
        with pytest.raises(RequestIdMismatch, match=f"request-id format changed.*vLLM {TESTED_VLLM}"):
            loop.generate(prompts[:3], [engine._sampling(one, seed) for seed in seeds[:3]])
    finally:
        loop._thread.join(timeout=60)
        while llm.llm_engine.has_unfinished_requests():  # the module's engine goes on clean
            llm.llm_engine.step()
    assert len(engine.generate(prompts[:2], PARAMS, seeds[:2])) == 2


def test_seeding_per_prompt_repeats_samples_and_per_batch_does_not(engine, tiny_cfg):
    records = make_split("test", 6, seed=5)

    def responses(seeding):
        rows = generate_rows(engine, records, PARAMS, prompt=tiny_cfg.prompt, few_shot=0, seed=7, seeding=seeding)
        return [row["responses"] for row in rows]

    assert responses("per_prompt") == responses("per_prompt")  # resumable: the same samples on a rerun
    assert responses("per_batch") != responses("per_batch")  # the engine's generator moved on


# The test below starts an engine of its own. Two vLLM engines in one process share its parallel
# state: destroying one breaks the other (FIELD-NOTES), so it comes after every test that uses
# the module's engine (the hung-engine test runs its engine in a process of its own).


def test_a_closed_loop_refuses_calls_instead_of_hanging(tiny_cfg, prompts_and_seeds, closing):
    prompts, seeds = prompts_and_seeds
    engine = closing(VLLMEngine(str(TINY_TEACHER), tiny_cfg.curate.engine, continuous=True))
    engine.step_loop.close()
    with pytest.raises(EngineLoopError):
        engine.generate(prompts[:1], PARAMS, seeds[:1])


def test_the_installed_vllm_has_what_the_step_loop_calls():
    import vllm

    check_vllm_api()  # the check every vLLM engine runs before its weights load: nothing missing
    assert vllm.__version__ == TESTED_VLLM


class HangWhileArmed:
    """A vLLM logits processor whose `apply` blocks while `armed` is set, until `release` is: the
    engine's step then hangs inside vLLM, as on a stuck kernel or collective."""

    armed, release = threading.Event(), threading.Event()

    def __init__(self, vllm_config, device, is_pin_memory):
        pass

    def is_argmax_invariant(self) -> bool:
        return False

    def update_state(self, batch_update) -> None:
        pass

    def apply(self, logits):
        if self.armed.is_set():
            self.release.wait()
        return logits


def hang_an_engine() -> dict:
    """In a process of its own (one vLLM engine per process: FIELD-NOTES): a real engine whose
    step blocks inside vLLM, behind a StepLoop with a 2 s stall timeout. Returns what each call got."""
    from vllm import LLM, SamplingParams
    from vllm.v1.sample.logits_processor import LogitsProcessor

    configure_vllm_cpu_env()
    processor = type("HangingProcessor", (HangWhileArmed, LogitsProcessor), {})
    llm = LLM(model=str(TINY_TEACHER), max_model_len=1024, dtype=resolve_dtype("auto", False), enforce_eager=True,
              enable_chunked_prefill=False, logits_processors=[processor], seed=0)
    loop = StepLoop(llm, stall_timeout_s=2.0)
    prompts = ["Tom has 3 apples. He buys 4 more.", "Zoe has 5 coins.", "Sam has 2 cats.", "Ann has 9 pens."]

    def call(start: int, size: int = 2):
        sampling = [SamplingParams(n=4, temperature=0.9, max_tokens=96, seed=start + i) for i in range(size)]
        return loop.generate(prompts[start:start + size], sampling)

    seen: dict = {"before": len(call(0))}  # steps that return: no stall, however long the requests
    HangWhileArmed.armed.set()
    with ThreadPoolExecutor(2) as pool:
        calls = [pool.submit(call, start) for start in (0, 2)]
        seen["hung"] = [repr(waiting.exception(timeout=120)) for waiting in calls]
    try:
        call(0, 1)
    except Exception as err:  # noqa: BLE001 - the refusal is what is returned
        seen["after"] = repr(err)
    HangWhileArmed.release.set()  # the step returns; the loop sees it was failed and ends
    loop._thread.join(timeout=60)
    seen["loop_ended"] = not loop._thread.is_alive()
    return seen


def test_a_hung_step_fails_its_calls_and_refuses_new_ones():
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
        seen = child.submit(hang_an_engine).result(timeout=600)
    assert seen["before"] == 2
    assert len(seen["hung"]) == 2
    for error in seen["hung"]:
        assert error.startswith("EngineStalled(") and "no progress for 2 s (engine.stall_timeout_s)" in error
    assert seen["after"].startswith("EngineStalled(")  # a hung engine takes no more calls
    assert seen["loop_ended"]
