"""The OpenAI-compatible surface of the evaluation API (`/v1/models`, `/v1/completions`,
`/v1/chat/completions`, `stream: true` as server-sent events), so lm-eval's `local-completions`,
the OpenAI SDKs and chat UIs can use a served student.

A thin layer over the same model replicas as `/evaluate`: the same auth, limits
and context check; prompts are rendered with the model's own chat template for chat requests and
passed as given for completions. The request schemas accept what OpenAI clients send and refuse
(422, naming the field) what this server cannot honour — `logprobs`, `echo`, penalties, `best_of`
— rather than silently ignore it. This module holds the schemas and the answer/chunk builders;
the routes are `serve.routes.openai`, the checks `serve.planning`.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from advdistill.serve.schemas import MAX_NAME_CHARS, MAX_QUESTION_CHARS, MAX_SEED, Text

MAX_PROMPTS = 64  # prompts in one /v1/completions request (serve.max_items bounds it further)
MAX_CHOICES = 16  # `n`
MAX_STOP = 4  # stop strings, as OpenAI allows
MAX_MESSAGES = 64
OPENAI_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for completions


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class _Sampled(BaseModel):
    """Fields both routes share."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    model: Text = Field(min_length=1, max_length=MAX_NAME_CHARS, description="a served model or checkpoint (GET /v1/models)")
    temperature: float = Field(1.0, ge=0, le=2, description="OpenAI's default 1.0; 0 = greedy")
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1, le=MAX_CHOICES, description="choices per prompt (n > 1 needs temperature > 0)")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="the same seed and prompt give the same choices")
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Annotated[Text, Field(min_length=1, max_length=200)] | list[
        Annotated[Text, Field(min_length=1, max_length=200)]] | None = Field(
        None, description=f"up to {MAX_STOP} stop strings; the text ends before the first")
    user: Text | None = Field(None, max_length=MAX_NAME_CHARS, description="accepted and ignored")
    # What OpenAI clients may send but this server does not compute: refused, not ignored.
    logprobs: Any = Field(None, json_schema_extra={"description": "not supported (null only)"})
    presence_penalty: float = Field(0.0, ge=0, le=0, description="not supported (0 only)")
    frequency_penalty: float = Field(0.0, ge=0, le=0, description="not supported (0 only)")

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> list[str]:
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings")
        return stops

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value: Any) -> Any:
        if value not in (None, False):
            raise ValueError("logprobs are not supported by this server")
        return value


class CompletionRequest(_Sampled):
    prompt: Annotated[Text, Field(min_length=1, max_length=MAX_QUESTION_CHARS)] | list[
        Annotated[Text, Field(min_length=1, max_length=MAX_QUESTION_CHARS)]] = Field(
        description=f"a prompt or a list of up to {MAX_PROMPTS}, passed to the model as given (no chat template)")
    max_tokens: int = Field(OPENAI_DEFAULT_MAX_TOKENS, ge=1, le=2**31 - 1,
                            description="at most serve.max_request_tokens (413)")
    echo: Literal[False] = Field(False, description="not supported (false only)")
    best_of: Literal[1] | None = Field(None, description="not supported (1 only)")

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, value: str | list[str]) -> list[str]:
        prompts = [value] if isinstance(value, str) else list(value)
        if not 1 <= len(prompts) <= MAX_PROMPTS:
            raise ValueError(f"give 1 to {MAX_PROMPTS} prompts")
        return prompts


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: Annotated[Text, Field(max_length=MAX_QUESTION_CHARS)]
    name: Text | None = Field(None, max_length=MAX_NAME_CHARS, description="accepted and ignored")


class ChatCompletionRequest(_Sampled):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(None, ge=1, le=2**31 - 1, description="default: the config's eval.max_tokens")
    max_completion_tokens: int | None = Field(None, ge=1, le=2**31 - 1, description="OpenAI's newer name for max_tokens")


# ------------------------------------------------------------------------------ answers


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


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


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


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


def completion(model: str, choices: list[list[dict[str, Any]]], prompt_tokens: int) -> Completion:
    """`choices[p]`: prompt p's choices as {text, num_tokens, finish_reason}; OpenAI numbers them
    across prompts (index = p · n + i)."""
    flat = [c for per_prompt in choices for c in per_prompt]
    return Completion(id=new_id("cmpl"), created=int(time.time()), model=model,
                      choices=[CompletionChoice(index=i, text=c["text"], finish_reason=c["finish_reason"])
                               for i, c in enumerate(flat)],
                      usage=usage(prompt_tokens, sum(c["num_tokens"] for c in flat)))


def chat_completion(model: str, choices: list[dict[str, Any]], prompt_tokens: int) -> ChatCompletion:
    return ChatCompletion(id=new_id("chatcmpl"), created=int(time.time()), model=model,
                          choices=[ChatChoice(index=i, message=AssistantMessage(content=c["text"]),
                                              finish_reason=c["finish_reason"]) for i, c in enumerate(choices)],
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
