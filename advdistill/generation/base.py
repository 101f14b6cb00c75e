"""What every generation engine shares: the call's parameters, what it returns, and the
`Engine` protocol the three implementations follow (`engines.VLLMEngine`, `engines.HFEngine`,
`endpoint.OpenAIEngine`). `factory.make_engine` picks one from an `EngineConfig`.

A prompt is text (rendered, passed as given) or a list of token ids (`Prompt`). A call returns,
per prompt, a list of `Completion(text, num_tokens, finish_reason)`, where finish_reason is "stop"
(end of turn or EOS) or "length" (cut at `max_tokens`) and num_tokens counts the generated tokens,
the stop token included. With `params.logprobs` set, each completion also carries its tokens'
log-probs, and with `params.prompt_logprobs` those of the prompt's tokens (the first is None: no
context predicts it) — what lm-eval's loglikelihood tasks read through the OpenAI API's `echo`.
Log-probs are the model's own (before temperature or top-p), as vLLM reports them. `stream` gives
one prompt's choices as they are generated (`Delta`s of new text), for the OpenAI-compatible API;
`close` frees the engine. An engine that cannot honour a request (the endpoint engine asked for
log-probs) raises `Unsupported`.

This module imports only the config (for `SamplingConfig`) and the standard library.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any, Iterator, Protocol, Sequence

from advdistill.config import SamplingConfig


Prompt = str | list[int]  # rendered text, or token ids as the model reads them


class Unsupported(ValueError):
    """A request this engine cannot honour (a client's error, not the engine's)."""


@dataclass(frozen=True)
class TokenLogprob:
    """One token's log-prob (None for a prompt's first token) and the `top` most likely tokens at
    its position as (token id, text, log-prob), most likely first."""

    token_id: int
    text: str
    logprob: float | None
    top: tuple[tuple[int, str, float], ...] = ()


@dataclass(frozen=True)
class Completion:
    text: str
    num_tokens: int
    finish_reason: str  # schema.FinishReason: "stop" | "length"
    logprobs: tuple[TokenLogprob, ...] | None = None  # the generated tokens' (params.logprobs)
    prompt_logprobs: tuple[TokenLogprob, ...] | None = None  # the prompt's tokens' (params.prompt_logprobs)


@dataclass(frozen=True)
class Delta:
    """New text of one choice of a streamed prompt; `finish_reason` is set on the choice's last."""

    index: int
    text: str
    num_tokens: int
    finish_reason: str | None = None


@dataclass(frozen=True, kw_only=True)
class GenerationParams:
    """Sampling for one call; temperature 0 means greedy (and then n must be 1). The neutral
    values below are the engine API's; experiments take theirs from the config."""

    max_tokens: int
    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = -1  # -1 = no top-k
    ignore_eos: bool = False  # always generate max_tokens (benchmarks)
    stop: tuple[str, ...] = ()  # stop strings (the OpenAI API's `stop`); the text ends before them
    logprobs: int | None = None  # the generated tokens' log-probs, with this many top alternatives each
    prompt_logprobs: int | None = None  # the prompt tokens' log-probs, with this many top alternatives each

    def __post_init__(self) -> None:
        if self.temperature == 0 and self.n != 1:
            raise ValueError("greedy decoding (temperature 0) gives one distinct sample: use n=1")
        object.__setattr__(self, "stop", tuple(self.stop))

    @classmethod
    def from_sampling(cls, s: SamplingConfig) -> "GenerationParams":
        """The teacher's sampling in curation (`curate.sampling`)."""
        return cls(n=s.n, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, max_tokens=s.max_tokens,
                   ignore_eos=s.ignore_eos)


class Engine(Protocol):
    tokenizer: Any

    def generate(
        self, prompts: Sequence[Prompt], params: GenerationParams, seeds: Sequence[int] | None = None
    ) -> list[list[Completion]]: ...

    def stream(self, prompt: Prompt, params: GenerationParams, seed: int | None = None) -> Iterator[Delta]: ...

    def close(self) -> None: ...


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def gpu_available() -> bool:
    import torch  # torch: only to ask for a GPU; the engines' users without one stay light

    return torch.cuda.is_available()
