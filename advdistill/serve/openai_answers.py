"""The answers of the OpenAI-compatible routes, as OpenAI shapes them: completions and chat
completions (with log-probs in the legacy completions shape and in the chat shape), the model
list, and the server-sent-event chunks of `stream: true`. The request schemas are
`serve.openai_compat`."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel

from advdistill.serve.schemas import ERROR_RESPONSES

class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionLogprobs(BaseModel):
    """OpenAI's legacy shape: per token its text, log-prob and {text: log-prob} of the most likely
    tokens (the chosen one included), and where it starts in the choice's text."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length"]
    logprobs: CompletionLogprobs | None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob]


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: ChatLogprobs | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class OpenAIModel(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "advdistill"


class OpenAIModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIModel]


def streamed_response(chunk: str, fields: str) -> dict[int | str, dict[str, Any]]:
    """The routes' 200 answer as /openapi.json documents it: the completion as JSON (the route's
    response model, merged in by FastAPI) or, with `stream: true`, server-sent events. In OpenAPI
    3.1 a `text/event-stream` schema describes each event; `data` is a JSON chunk, `[DONE]` last."""
    event = {
        "type": "object",
        "required": ["data"],
        "properties": {"data": {"type": "string", "description": f"a JSON chunk (object `{chunk}`: id, created, "
                                                                 f"model, choices [{fields}]; with "
                                                                 "stream_options.include_usage a last chunk with "
                                                                 "no choices and the usage), then `[DONE]`"}},
    }
    return {200: {"description": "the completion (JSON), or with `stream: true` its chunks as server-sent events",
                  "content": {"text/event-stream": {"schema": event}}}}


STREAMED_COMPLETION = streamed_response("text_completion", "{index, text, finish_reason}")
STREAMED_CHAT_COMPLETION = streamed_response("chat.completion.chunk", "{index, delta {role?, content?}, finish_reason}")


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> Usage:
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                 total_tokens=prompt_tokens + completion_tokens)


LOWEST_LOGPROB = -9999.0  # -inf (a token the model rules out) as vLLM's server writes it: JSON has no infinity


def finite(logprob: float | None) -> float | None:
    return None if logprob is None else max(logprob, LOWEST_LOGPROB)


def completion_logprobs(tokens: list[Any]) -> CompletionLogprobs:
    """`tokens`: `generation.base.TokenLogprob`s (the prompt's first without a log-prob)."""
    offsets, at = [], 0
    for t in tokens:
        offsets.append(at)
        at += len(t.text)
    return CompletionLogprobs(tokens=[t.text for t in tokens], token_logprobs=[finite(t.logprob) for t in tokens],
                              top_logprobs=[None if t.logprob is None else
                                            {**{text: finite(lp) for _, text, lp in t.top}, t.text: finite(t.logprob)}
                                            for t in tokens],
                              text_offset=offsets)


def completion(model: str, choices: list[list[dict[str, Any]]], prompt_tokens: int,
               echoed: list[str] | None = None) -> Completion:
    """`choices[p]`: prompt p's choices as {text, num_tokens, finish_reason, logprobs,
    prompt_logprobs}; OpenAI numbers them across prompts (index = p · n + i). `echoed[p]`: prompt p
    as text, put before each of its choices (`echo`), with its tokens' log-probs where asked."""
    answers = []
    for p, per_prompt in enumerate(choices):
        for c in per_prompt:
            text, tokens = c["text"], c.get("logprobs")
            if echoed is not None:
                text = echoed[p] + text
                if tokens is not None:
                    tokens = list(c["prompt_logprobs"]) + list(tokens)
            answers.append(CompletionChoice(index=len(answers), text=text, finish_reason=c["finish_reason"],
                                            logprobs=None if tokens is None else completion_logprobs(tokens)))
    return Completion(id=new_id("cmpl"), created=int(time.time()), model=model, choices=answers,
                      usage=usage(prompt_tokens, sum(c["num_tokens"] for per_prompt in choices for c in per_prompt)))


def _top(text: str, logprob: float) -> dict[str, Any]:
    return {"token": text, "logprob": finite(logprob), "bytes": list(text.encode("utf-8"))}


def chat_logprobs(tokens: list[Any]) -> ChatLogprobs:
    return ChatLogprobs(content=[ChatTokenLogprob(**_top(t.text, t.logprob),
                                                  top_logprobs=[TopLogprob(**_top(text, lp)) for _, text, lp in t.top])
                                 for t in tokens])


def chat_completion(model: str, choices: list[dict[str, Any]], prompt_tokens: int) -> ChatCompletion:
    return ChatCompletion(id=new_id("chatcmpl"), created=int(time.time()), model=model,
                          choices=[ChatChoice(index=i, message=AssistantMessage(content=c["text"]),
                                              finish_reason=c["finish_reason"],
                                              logprobs=None if c.get("logprobs") is None else chat_logprobs(c["logprobs"]))
                                   for i, c in enumerate(choices)],
                          usage=usage(prompt_tokens, sum(c["num_tokens"] for c in choices)))


def sse(payload: dict[str, Any] | str) -> bytes:
    """One server-sent event, as OpenAI streams them (`data: {...}`, then `data: [DONE]`)."""
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n".encode()


def completion_chunk(stream_id: str, created: int, model: str, index: int, text: str,
                     finish_reason: str | None) -> dict[str, Any]:
    return {"id": stream_id, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": index, "text": text, "finish_reason": finish_reason, "logprobs": None}]}


def chat_chunk(stream_id: str, created: int, model: str, index: int, delta: dict[str, str],
               finish_reason: str | None) -> dict[str, Any]:
    return {"id": stream_id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]}


def usage_chunk(stream_id: str, created: int, model: str, kind: str, prompt_tokens: int,
                completion_tokens: int) -> dict[str, Any]:
    """The last chunk when `stream_options.include_usage`: no choices, the request's usage."""
    return {"id": stream_id, "object": kind, "created": created, "model": model, "choices": [],
            "usage": usage(prompt_tokens, completion_tokens).model_dump()}


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIErrorBody(BaseModel):
    """Every /v1 error (`serve.openai_errors`)."""

    error: OpenAIErrorDetail


# The /v1 routes' error answers as /openapi.json documents them: the statuses of the rest of the
# API, in OpenAI's shape.
OPENAI_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": OpenAIErrorBody, "description": answer["description"]} for status, answer in ERROR_RESPONSES.items()}
OPENAI_ERROR_RESPONSES[422] = {"model": OpenAIErrorBody, "description": "the field at fault (`param`) and why (every "
                                                                        "issue in `message`), at most a short excerpt "
                                                                        "of the input"}
