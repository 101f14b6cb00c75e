"""The OpenAI-compatible routes (request schemas: `serve.openai_compat`, answers:
`serve.openai_answers`): GET /v1/models and /v1/models/{id}, POST /v1/completions (prompts as
given: text or token ids) and POST /v1/chat/completions (messages rendered with the model's chat
template), each answering JSON or, with `stream: true`, server-sent events as OpenAI streams
them. Their errors answer in OpenAI's shape (`serve.openai_errors`)."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Path
from fastapi.responses import StreamingResponse

from advdistill.serve.errors import describe
from advdistill.serve.execution import complete
from advdistill.serve.openai_answers import (
    OPENAI_ERROR_RESPONSES,
    STREAMED_CHAT_COMPLETION,
    STREAMED_COMPLETION,
    ChatCompletion,
    Completion,
    OpenAIModel,
    OpenAIModelList,
    chat_chunk,
    chat_completion,
    completion,
    completion_chunk,
    new_id,
    sse,
    usage_chunk,
)
from advdistill.serve.openai_compat import ChatCompletionRequest, CompletionRequest
from advdistill.serve.planning import CompletionPlan
from advdistill.serve.routes.dependencies import Service, authorized
from advdistill.serve.schemas import MAX_NAME_CHARS, Text

router = APIRouter(dependencies=[Depends(authorized)])


@router.get("/v1/models", responses={401: OPENAI_ERROR_RESPONSES[401]})
async def openai_models(service: Service) -> OpenAIModelList:
    return OpenAIModelList(data=[OpenAIModel(id=name, created=service.started)
                                 for name in await service.catalog.names()])


@router.get("/v1/models/{model:path}", responses=OPENAI_ERROR_RESPONSES)
async def openai_model(model: Annotated[Text, Path(min_length=1, max_length=MAX_NAME_CHARS)],
                       service: Service) -> OpenAIModel:
    """A served model, or a checkpoint folder under the checkpoint root (served on demand)."""
    served = await service.catalog.resolve(model)
    return OpenAIModel(id=served.name, created=service.started)


@router.post("/v1/completions", responses={**OPENAI_ERROR_RESPONSES, **STREAMED_COMPLETION})
async def openai_completions(body: CompletionRequest, service: Service) -> Completion:
    """Prompts as given (no chat template); `stream: true` answers server-sent events."""
    plan = await service.planner.completion(body)
    if body.stream:
        return stream(plan, body, chat=False)
    choices = await complete(plan.served, plan.prompts, plan.params, body.seed)
    return completion(plan.served.name, choices, sum(plan.prompt_tokens), plan.echoed)


@router.post("/v1/chat/completions", responses={**OPENAI_ERROR_RESPONSES, **STREAMED_CHAT_COMPLETION})
async def openai_chat(body: ChatCompletionRequest, service: Service) -> ChatCompletion:
    """Messages rendered with the model's own chat template; `stream: true` answers events."""
    plan = await service.planner.chat(body)
    if body.stream:
        return stream(plan, body, chat=True)
    [choices] = await complete(plan.served, plan.prompts, plan.params, body.seed)
    return chat_completion(plan.served.name, choices, plan.prompt_tokens[0])


def stream(plan: CompletionPlan, body: CompletionRequest | ChatCompletionRequest, *, chat: bool) -> StreamingResponse:
    """Server-sent events as OpenAI streams them: a chunk per piece of new text (chat: the role
    first), the finish reason on a choice's last chunk, usage if asked, then [DONE]."""
    stream_id, created, model = new_id("chatcmpl" if chat else "cmpl"), int(time.time()), plan.served.name
    handle = plan.served.handle.options(stream=True)

    def chunk(index: int, delta: dict[str, str], finish_reason: str | None) -> bytes:
        return sse(chat_chunk(stream_id, created, model, index, delta, finish_reason))

    async def events():
        tokens, started = 0, set()
        try:
            for p, prompt in enumerate(plan.prompts):
                async for delta in handle.stream.remote(prompt, plan.params, body.seed):
                    index = p * body.n + delta["index"]
                    tokens += delta["num_tokens"]
                    if not chat:
                        yield sse(completion_chunk(stream_id, created, model, index, delta["text"],
                                                   delta["finish_reason"]))
                        continue
                    if index not in started:
                        started.add(index)
                        yield chunk(index, {"role": "assistant", "content": ""}, None)
                    if delta["text"]:
                        yield chunk(index, {"content": delta["text"]}, None)
                    if delta["finish_reason"]:
                        yield chunk(index, {}, delta["finish_reason"])
        except Exception as err:  # noqa: BLE001 - the status line is sent: report in the stream
            yield sse({"error": {"message": describe(err), "type": "server_error"}})  # no Ray traceback, PID or IP
            return
        if body.stream_options is not None and body.stream_options.include_usage:
            yield sse(usage_chunk(stream_id, created, model, "chat.completion.chunk" if chat else "text_completion",
                                  sum(plan.prompt_tokens), tokens))
        yield sse("[DONE]")

    return StreamingResponse(events(), media_type="text/event-stream")
