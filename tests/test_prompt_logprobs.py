"""The transformers engine's log-probs and token-id prompts (what /v1's `echo` + `logprobs` and
lm-eval's default token-id requests reach), checked against lm-evaluation-harness's own `hf`
model computing the same loglikelihoods. The vLLM engine's are checked through the served API
against the same reference in tests/test_openai_clients.py."""

from __future__ import annotations

import pytest

from advdistill.generation.base import GenerationParams
from advdistill.generation.engines import HFEngine

from conftest import REPO

STUDENT = str(REPO / "models" / "tiny-student")
PAIRS = [("What is 2 + 3? Answer:", " 5"), ("What is 2 + 3? Answer:", " 7 apples"), ("<think>", " 12 - 4 = 8")]


@pytest.fixture(scope="module")
def engine():
    return HFEngine(STUDENT)


def test_prompt_logprobs_equal_lm_evals_own_loglikelihoods(engine):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    reference = HFLM(pretrained=STUDENT, device="cpu", batch_size=1, dtype="float32").loglikelihood(
        [Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=0) for pair in PAIRS])
    tokenizer = engine.tokenizer
    for (context, continuation), (expected, greedy) in zip(PAIRS, reference):
        whole = tokenizer(context + continuation)["input_ids"]
        start = len(tokenizer(context)["input_ids"])
        [[choice]] = engine.generate([whole], GenerationParams(max_tokens=1, logprobs=1, prompt_logprobs=1))
        tokens = choice.prompt_logprobs
        assert [t.token_id for t in tokens] == whole and tokens[0].logprob is None
        assert sum(t.logprob for t in tokens[start:]) == pytest.approx(expected, abs=1e-4)
        assert all(t.top[0][2] >= t.logprob for t in tokens[1:])  # the most likely first
        assert greedy == all(t.top[0][0] == t.token_id for t in tokens[start:])
        assert len(choice.logprobs) == 1 == choice.num_tokens and len(choice.logprobs[0].top) == 1


def test_token_id_prompts_generate_what_their_text_does(engine):
    tokenizer = engine.tokenizer
    texts = ["What is 2 + 3?", "<think>"]
    params = GenerationParams(max_tokens=12)
    by_text = engine.generate(texts, params)
    by_ids = engine.generate([tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts], params)
    assert by_ids == by_text and by_text[0][0].num_tokens > 0
    [[plain]] = engine.generate(texts[:1], GenerationParams(max_tokens=12, logprobs=0))
    assert plain.text == by_text[0][0].text and all(t.top == () for t in plain.logprobs)
    assert plain.prompt_logprobs is None
