"""Real OpenAI clients, unchanged, against the served tiny student on Ray Serve (loopback HTTP):
lm-evaluation-harness's `local-completions` with its defaults — prompts as token-id lists, the
task's five stop strings plus the EOS it adds, one prompt per request — on a `generate_until` task
and on a multiple-choice loglikelihood task (`echo` + `logprobs`: the prompt tokens' log-probs),
both from local JSONL (tests/lm_eval_tasks/), each scoring what lm-eval's own `hf` model scores
offline on the same checkpoint; and the official openai SDK over every /v1 route. The request
checks without generation are in tests/test_request_checks.py."""

from __future__ import annotations

import openai
import pytest
import yaml

from conftest import REPO

STUDENT = REPO / "models" / "tiny-student"
TASKS = REPO / "tests" / "lm_eval_tasks"
GENERATE, CHOICE = "advdistill_arithmetic_generate", "advdistill_arithmetic_choice"
STOPS = ["</answer>", "<|im_end|>", "Question:", "\n\n\n", "<|endoftext|>", "Q:"]


@pytest.fixture(scope="module")
def server(serve_app, tmp_path_factory):
    # float32, as the offline reference computes: vLLM's `auto` runs a float32 checkpoint in bf16
    # where the CPU has it, which moves loglikelihoods by ~0.1 (a dtype's difference, not the API's).
    config = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    config["eval"]["engine"]["dtype"] = "float32"
    path = tmp_path_factory.mktemp("config") / "tiny-float32.yaml"
    path.write_text(yaml.safe_dump(config))
    return serve_app({"config": str(path), "checkpoint_root": str(REPO),
                      "data_root": str(tmp_path_factory.mktemp("data")), "on_demand": False,
                      "jobs_folder": str(tmp_path_factory.mktemp("jobs")),
                      "models": [{"name": "tiny-student", "path": "models/tiny-student", "base_model": False}]},
                     "openai-clients")


@pytest.fixture
def offline_hub(monkeypatch):
    """lm-eval reads the local JSONL and the local tokenizer only (no hub here); the task files
    name their data relative to the repository."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.chdir(REPO)


def lm_eval_run(model) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(model=model, tasks=[GENERATE, CHOICE], log_samples=True,
                                   task_manager=TaskManager(include_path=str(TASKS)))


def test_lm_eval_with_its_defaults_scores_what_it_scores_offline(server, offline_hub):
    from lm_eval.models.huggingface import HFLM
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    served = LocalCompletionsAPI(base_url=server + "/v1/completions", model="tiny-student", tokenizer=str(STUDENT),
                                 max_retries=1)
    assert served.tokenized_requests and served._batch_size == 1  # lm-eval's defaults, unchanged
    online = lm_eval_run(served)
    offline = lm_eval_run(HFLM(pretrained=str(STUDENT), device="cpu", batch_size=1, dtype="float32"))
    for task, metrics in (GENERATE, ["exact_match,boxed"]), (CHOICE, ["acc,none", "acc_norm,none"]):
        assert online["results"][task]["sample_len"] == 8
        for metric in metrics:
            assert online["results"][task][metric] == offline["results"][task][metric], (task, metric)
    # Per document: the same generations, and loglikelihoods equal to float precision (vLLM on
    # the server, transformers offline).
    by_doc = {task: [(s["doc_id"], s["resps"]) for s in sorted(run["samples"][task], key=lambda s: s["doc_id"])]
              for run in (online,) for task in (GENERATE, CHOICE)}
    reference = {task: [(s["doc_id"], s["resps"]) for s in sorted(offline["samples"][task], key=lambda s: s["doc_id"])]
                 for task in (GENERATE, CHOICE)}
    assert by_doc[GENERATE] == reference[GENERATE]
    assert any("\\boxed" in resps[0][0] for _, resps in by_doc[GENERATE])  # real answers, not empty text
    for (doc, got), (_, expected) in zip(by_doc[CHOICE], reference[CHOICE], strict=True):
        assert [r[0][0] for r in got] == pytest.approx([r[0][0] for r in expected], abs=2e-3), doc
        assert [r[0][1] for r in got] == [r[0][1] for r in expected], doc


def test_openai_sdk_over_every_route(server):
    from transformers import AutoTokenizer

    client = openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0)
    tokenizer = AutoTokenizer.from_pretrained(STUDENT)
    # GET /v1/models and /v1/models/{id}
    assert [m.id for m in client.models.list()] == ["tiny-student"]
    assert client.models.retrieve("tiny-student").id == "tiny-student"
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("tiny-studnet")
    assert missing.value.code == "model_not_found" and "tiny-studnet" in missing.value.message

    # /v1/completions: 72 prompts in one request (more than lm-eval's batches), six stop strings,
    # token-id prompts giving what their text gives, streamed or not.
    questions = [f"Question: what is {a} + {a + 1}?\nAnswer:" for a in range(72)]
    many = client.completions.create(model="tiny-student", prompt=questions, max_tokens=6, temperature=0, stop=STOPS)
    assert [c.index for c in many.choices] == list(range(72)) and all(c.finish_reason for c in many.choices)
    ids = [tokenizer(q)["input_ids"] for q in questions[:3]]
    by_ids = client.completions.create(model="tiny-student", prompt=ids, max_tokens=6, temperature=0, stop=STOPS)
    assert [c.text for c in by_ids.choices] == [c.text for c in many.choices[:3]]
    assert by_ids.usage.prompt_tokens == sum(map(len, ids))
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="tiny-student", prompt=ids[0], max_tokens=6, temperature=0, stop=STOPS, stream=True) if c.choices)
    assert streamed == many.choices[0].text

    # echo + logprobs: the prompt tokens' log-probs (the first has none), then the generated one's
    scored = client.completions.create(model="tiny-student", prompt=questions[0], max_tokens=1, temperature=0,
                                       logprobs=2, echo=True, suffix=None, extra_body={"top_k": 5})
    choice, prompt_tokens = scored.choices[0], scored.usage.prompt_tokens
    assert choice.text.startswith(questions[0]) and "".join(choice.logprobs.tokens[:prompt_tokens]) == questions[0]
    assert len(choice.logprobs.token_logprobs) == prompt_tokens + 1 and choice.logprobs.token_logprobs[0] is None
    assert all(lp <= 0 for lp in choice.logprobs.token_logprobs[1:])
    assert all(2 <= len(top) <= 3 and max(top.values()) >= lp
               for top, lp in zip(choice.logprobs.top_logprobs[1:], choice.logprobs.token_logprobs[1:]))
    assert choice.logprobs.text_offset[:2] == [0, len(choice.logprobs.tokens[0])]

    # /v1/chat/completions: content as text parts and the developer role mean the plain form;
    # log-probs of each generated token with its alternatives; harmless fields accepted.
    system = "Think in <think> </think>, then answer in <answer> </answer> with \\boxed{}."
    question = "Sam has 20 apples. He gives away 7. How many apples does Sam have now?"
    plain = client.chat.completions.create(model="tiny-student", temperature=0, max_tokens=48, messages=[
        {"role": "system", "content": system}, {"role": "user", "content": question}])
    parts = client.chat.completions.create(
        model="tiny-student", temperature=0, max_completion_tokens=48, logprobs=True, top_logprobs=2,
        response_format={"type": "text"}, messages=[
            {"role": "developer", "content": [{"type": "text", "text": system}]},
            {"role": "user", "content": [{"type": "text", "text": question}]}])
    assert parts.choices[0].message.content == plain.choices[0].message.content != ""
    tokens = parts.choices[0].logprobs.content
    assert len(tokens) == parts.usage.completion_tokens and all(len(t.top_logprobs) == 2 for t in tokens)
    assert "".join(t.token for t in tokens).startswith(plain.choices[0].message.content)
    assert all(t.top_logprobs[0].logprob >= t.logprob for t in tokens)

    # Errors in OpenAI's shape, read by the SDK into its exception's fields.
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        client.chat.completions.create(model="tiny-student", messages=[{"role": "user", "content": "x"}],
                                       presence_penalty=0.5)
    assert refused.value.param == "presence_penalty" and refused.value.code == "less_than_equal"
    with pytest.raises(openai.APIStatusError) as over:
        client.completions.create(model="tiny-student", prompt="x", max_tokens=10**6)
    assert over.value.status_code == 413 and "max_tokens" in over.value.message
