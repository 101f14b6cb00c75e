"""The OpenAI-compatible surface of the evaluation API (`/v1/models`, `/v1/models/{id}`,
`/v1/completions`, `/v1/chat/completions`, `stream: true` as server-sent events), so clients
written for OpenAI — lm-evaluation-harness's `local-completions` with its defaults, the OpenAI
SDKs, chat UIs — use a served student unchanged.

A thin layer over the same model replicas as `/evaluate`: the same auth, limits and context
check; chat messages are rendered with the model's own chat template, completion prompts passed as
given (text, or token ids as lm-eval sends them). What OpenAI clients send is accepted: prompts as
token-id lists, up to `MAX_STOP` stop strings, `logprobs`/`top_logprobs` and `echo` (the prompt's
own log-probs: lm-eval's loglikelihood tasks), content as a list of text parts, the `developer`
role, and fields whose value changes nothing here (`response_format: text`, `suffix: null`,
`logprobs: false`, `top_k`). A value this server cannot honour (penalties, `best_of` > 1, images,
JSON mode, tools, log-probs while streaming) is refused naming the field, never silently ignored;
every /v1 error answers in OpenAI's shape, `{"error": {message, type, param, code}}`
(`openai_errors`). This module holds the request schemas; the answers and stream chunks are
`serve.openai_answers`, the routes `serve.routes.openai`, the checks `serve.planning`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from advdistill.serve.schemas import MAX_NAME_CHARS, MAX_QUESTION_CHARS, MAX_SEED, Text

# Per-request bounds of the schema (README, "/v1"): `serve.max_items` bounds prompts x n further
# (413), `serve.max_request_tokens` max_tokens, the model's context each prompt.
MAX_PROMPTS = 2048  # prompts in one /v1/completions request (lm-eval batches up to its batch_size)
MAX_PROMPT_TOKENS = 131_072  # ids in one token-id prompt (the context check bounds it further)
MAX_CHOICES = 16  # `n`
MAX_STOP = 64  # stop strings (OpenAI documents 4; lm-eval's stock tasks send 5-6, vLLM takes any number)
MAX_STOP_CHARS = 200
MAX_LOGPROBS = 20  # top alternatives per token: OpenAI's bound for chat, vLLM's default max_logprobs
MAX_MESSAGES = 256
MAX_CONTENT_PARTS = 64
OPENAI_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for completions

TokenId = Annotated[int, Field(ge=0, le=2**31 - 1)]
TokenIds = Annotated[list[TokenId], Field(min_length=1, max_length=MAX_PROMPT_TOKENS)]
PromptText = Annotated[Text, Field(min_length=1, max_length=MAX_QUESTION_CHARS)]
Prompt = str | list[int]  # what a plan hands the engine: text, or token ids


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False
    continuous_usage_stats: Literal[False] = Field(False, description="not supported (false only)")


class _Sampled(BaseModel):
    """Fields both routes share."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    model: Text = Field(min_length=1, max_length=MAX_NAME_CHARS, description="a served model or checkpoint (GET /v1/models)")
    temperature: float | None = Field(1.0, ge=0, le=2, description="OpenAI's default 1.0; 0 = greedy")
    top_p: float | None = Field(1.0, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1, le=2**31 - 1, description="vLLM's extension; -1, 0 or null = off")
    n: int = Field(1, ge=1, le=MAX_CHOICES, description="choices per prompt (n > 1 needs temperature > 0)")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="the same seed and prompt give the same choices")
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: Annotated[Text, Field(max_length=MAX_STOP_CHARS)] | list[
        Annotated[Text, Field(max_length=MAX_STOP_CHARS)]] | None = Field(
        None, description=f"up to {MAX_STOP} stop strings; the text ends before the first")
    user: Text | None = Field(None, max_length=MAX_NAME_CHARS, description="accepted and ignored")
    # What OpenAI clients may send but this server does not compute: neutral values only.
    presence_penalty: float | None = Field(0.0, ge=0, le=0, description="not supported (0 only)")
    frequency_penalty: float | None = Field(0.0, ge=0, le=0, description="not supported (0 only)")
    logit_bias: dict[str, float] | None = Field(None, max_length=0, description="not supported (empty only)")

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> list[str]:
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings")
        return [s for s in stops if s]  # an empty stop string stops nothing (vLLM ignores it too)

    @property
    def sampling(self) -> dict[str, Any]:
        """The sampling fields with OpenAI's defaults in place of nulls."""
        return {"temperature": 1.0 if self.temperature is None else self.temperature,
                "top_p": 1.0 if self.top_p is None else self.top_p,
                "top_k": self.top_k if self.top_k and self.top_k > 0 else -1}


class CompletionRequest(_Sampled):
    prompt: PromptText | TokenIds | Annotated[list[PromptText], Field(min_length=1, max_length=MAX_PROMPTS)] | \
        Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_PROMPTS)] = Field(
        description=f"a prompt or a list of up to {MAX_PROMPTS}, each text or token ids, read by the model as given "
                    "(no chat template)")
    max_tokens: int | None = Field(OPENAI_DEFAULT_MAX_TOKENS, ge=1, le=2**31 - 1,
                                   description="at most serve.max_request_tokens (413); null = 16, as OpenAI")
    echo: bool | None = Field(False, description="the prompt before the completion (with logprobs: the prompt "
                                                 "tokens' log-probs too, the first null)")
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS, description="each token's log-prob and this many most "
                                                                         "likely alternatives (false/null: none)")
    suffix: Literal[""] | None = Field(None, description="not supported (null only)")
    best_of: Literal[1] | None = Field(None, description="not supported (1 only)")

    @field_validator("logprobs", mode="before")
    @classmethod
    def _logprobs_false(cls, value: Any) -> Any:
        return None if value is False else value  # `logprobs: false` means none; an int field would read 0

    @field_validator("prompt")
    @classmethod
    def _as_list(cls, value: Any) -> list[Prompt]:
        """Every form as a list of prompts, each text or token ids."""
        return [value] if isinstance(value, str) or isinstance(value[0], int) else list(value)


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"] = Field(description="text parts only: this server reads no images, audio or files")
    text: Annotated[Text, Field(max_length=MAX_QUESTION_CHARS)]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant"] = Field(
        description="`developer` is OpenAI's newer name for `system` and is rendered as one")
    content: Annotated[Text, Field(max_length=MAX_QUESTION_CHARS)] | Annotated[
        list[TextPart], Field(max_length=MAX_CONTENT_PARTS)]
    name: Text | None = Field(None, max_length=MAX_NAME_CHARS, description="accepted and ignored")

    # Parsed, a message is what a chat template reads: `content` one text (parts joined by
    # newlines, as vLLM joins them), `developer` as `system`.
    @field_validator("content")
    @classmethod
    def _joined(cls, value: str | list[TextPart]) -> str:
        return value if isinstance(value, str) else "\n".join(part.text for part in value)

    @field_validator("role")
    @classmethod
    def _developer_is_system(cls, value: str) -> str:
        return "system" if value == "developer" else value


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"] = Field(description="text only: no JSON mode or schemas")


class ChatCompletionRequest(_Sampled):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(None, ge=1, le=2**31 - 1, description="default: the config's eval.max_tokens")
    max_completion_tokens: int | None = Field(None, ge=1, le=2**31 - 1, description="OpenAI's newer name for max_tokens")
    logprobs: bool | None = Field(False, description="the generated tokens' log-probs")
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS, description="alternatives per token (needs logprobs)")
    response_format: ResponseFormat | None = None
    tools: Annotated[list[Any], Field(max_length=0)] | None = Field(None, description="not supported (empty only)")
    tool_choice: Literal["none", "auto"] | None = Field(None, description="none or auto (no tools: the same)")
    parallel_tool_calls: bool | None = Field(None, description="accepted and ignored (no tools)")

    @model_validator(mode="after")
    def _top_logprobs_need_logprobs(self) -> "ChatCompletionRequest":
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self
