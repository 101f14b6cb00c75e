"""A teacher behind any OpenAI-compatible server: the third `Engine` (beside vLLM and
transformers in `engines.py`), for teachers a user cannot host.

The prompt is the one the local engines get (`prompts.build_prompt` with the teacher's own
tokenizer, chat template applied here) and goes to the completions API, `/v1/completions`, with
`n = K` samples per request (or K one-sample requests, `samples_per_request: one`), the prompt's
seed, and the teacher's end-of-turn token as a stop string, so a base model stops where its turn
ends, as with the local engines. Finish reasons are the server's (`stop` / `length`); each
response's token count comes from the teacher's tokenizer (the stop token included when the
server stopped, as the local engines count it), the request totals from `usage`.

What each prompt cost is counted where it is known: `generate_metered` returns, beside the
completions, one `usage` per prompt — requests sent (the client's retries included: 1 +
`retries_taken` per call), prompt and completion tokens as the server counted them — which the
Ray Data stage writes into that prompt's group (`schema.CuratedGroup`), so the curation summary
sums what the written groups cost, across runs and reruns. `stats` keeps the engine's running
totals.

The official `openai` client does the HTTP: retries with exponential backoff on 408/409/429/5xx,
timeouts and refused connections (honouring Retry-After), and typed errors. On top of it: a
bound on requests in flight (a thread pool of `max_concurrency`), an optional request-rate cap,
and a clear, immediate error on 401/403/404 (`EndpointError`, naming the key variable or model).
`stats` counts requests sent (retries included), the retries among them and billed tokens.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from advdistill.config import EndpointConfig, EngineConfig
from advdistill.generation.base import Completion, Delta, GenerationParams, Prompt, Unsupported
from advdistill.prompts import end_of_turn_token_ids
from advdistill.schema import ENDED, TRUNCATED
from advdistill.storage import local_model

if TYPE_CHECKING:
    from openai.types import CompletionChoice


class EndpointError(RuntimeError):
    """The endpoint refused the work in a way no retry fixes (bad key, unknown model)."""


class RateLimiter:
    """At most `per_second` starts a second across threads (evenly spaced)."""

    def __init__(self, per_second: float | None):
        self.interval = 1.0 / per_second if per_second else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        time.sleep(max(0.0, start - now))


class OpenAIEngine:
    def __init__(self, model: str, cfg: EngineConfig, seed: int = 0):
        import openai  # the openai client: loaded only when an endpoint teacher is used
        from transformers import AutoTokenizer  # transformers: not needed to import the engines

        self.cfg: EndpointConfig = cfg.endpoint
        self.model = self.cfg.model or model
        self.tokenizer = AutoTokenizer.from_pretrained(local_model(model, weights=False))
        self.stop_token_ids = list(end_of_turn_token_ids(self.tokenizer))
        self.stop = [self.tokenizer.decode([i]) for i in self.stop_token_ids]
        key = os.environ.get(self.cfg.api_key_env) if self.cfg.api_key_env else None
        self.client = openai.OpenAI(base_url=self.cfg.base_url, api_key=key or "none", timeout=self.cfg.timeout_s,
                                    max_retries=self.cfg.max_retries)
        self.pool = ThreadPoolExecutor(max_workers=self.cfg.max_concurrency, thread_name_prefix="endpoint")
        self.limiter = RateLimiter(self.cfg.requests_per_second)
        self.seed = seed
        self.stats = {"requests": 0, "retries": 0, "prompt_tokens": 0, "completion_tokens": 0}
        self._stats_lock = threading.Lock()

    # -- one request ------------------------------------------------------------------------

    def _request(self, prompt: Prompt, n: int, params: GenerationParams, seed: int | None) -> tuple[list[CompletionChoice], dict[str, int]]:
        """The choices of one completions request, in index order, and its `usage` (requests sent,
        the client's retries included; prompt and completion tokens as the server counted them)."""
        import openai  # the openai client: loaded only when an endpoint teacher is used

        self.limiter.wait()
        stops = [] if params.ignore_eos else self.stop
        extra: dict[str, Any] = {}
        if self.cfg.server_extensions:
            # The end-of-turn token itself: servers detokenize without special tokens, so the stop
            # string alone never matches it.
            extra["stop_token_ids"] = [] if params.ignore_eos else self.stop_token_ids
            extra["ignore_eos"] = params.ignore_eos
            if params.top_k > 0:
                extra["top_k"] = params.top_k
        try:
            raw = self.client.completions.with_raw_response.create(
                model=self.model, prompt=prompt, n=n, temperature=params.temperature, top_p=params.top_p,
                max_tokens=params.max_tokens, seed=seed if self.cfg.send_seed else None,
                stop=(stops + list(params.stop))[:4] or None, extra_body=extra or None)
        except openai.AuthenticationError as err:
            raise EndpointError(f"{self.cfg.base_url} refused the API key (401): set {self.cfg.api_key_env} to a "
                                f"valid key") from err
        except openai.PermissionDeniedError as err:
            raise EndpointError(f"{self.cfg.base_url} denied access (403) to {self.model!r}") from err
        except openai.NotFoundError as err:
            raise EndpointError(f"{self.cfg.base_url} has no model {self.model!r} (404): check endpoint.model and "
                                "base_url") from err
        answer = raw.parse()
        retries = int(getattr(raw, "retries_taken", 0) or 0)
        usage = {"requests": 1 + retries,
                 "prompt_tokens": (answer.usage.prompt_tokens or 0) if answer.usage is not None else 0,
                 "completion_tokens": (answer.usage.completion_tokens or 0) if answer.usage is not None else 0}
        with self._stats_lock:
            self.stats["retries"] += retries
            for key, value in usage.items():
                self.stats[key] += value
        return sorted(answer.choices, key=lambda c: c.index), usage

    def _completion(self, choice: CompletionChoice) -> Completion:
        text = choice.text or ""
        stopped = choice.finish_reason != "length"
        tokens = len(self.tokenizer(text, add_special_tokens=False)["input_ids"]) + (1 if stopped else 0)
        return Completion(text, tokens, ENDED if stopped else TRUNCATED)

    def _prompt(self, prompt: Prompt, params: GenerationParams, seed: int | None) -> tuple[list[Completion], dict[str, int]]:
        """One prompt's completions and its usage (summed over its requests)."""
        if self.cfg.samples_per_request == "n" or params.n == 1:
            choices, usage = self._request(prompt, params.n, params, seed)
        else:  # one sample per request, each with its own seed
            answers = [self._request(prompt, 1, params, None if seed is None else seed + i) for i in range(params.n)]
            choices = [got[0] for got, _ in answers]
            usage = {key: sum(u[key] for _, u in answers) for key in answers[0][1]}
        if len(choices) != params.n:
            raise EndpointError(f"{self.cfg.base_url} answered {len(choices)} choices for n={params.n}: set "
                                "endpoint.samples_per_request: one for servers without n")
        return [self._completion(c) for c in choices], usage

    # -- the Engine interface -------------------------------------------------------------

    def generate(self, prompts: Sequence[Prompt], params: GenerationParams, seeds: Sequence[int] | None = None) -> list[list[Completion]]:
        return self.generate_metered(prompts, params, seeds)[0]

    @staticmethod
    def _check_supported(params: GenerationParams) -> None:
        # Token-id prompts pass through (the completions API takes them); log-probs would need the
        # server's own format and prompt log-probs a vLLM extension: not asked of an endpoint.
        if params.logprobs is not None or params.prompt_logprobs is not None:
            raise Unsupported("log-probs are not supported by the endpoint engine (backend: openai)")

    def generate_metered(self, prompts: Sequence[Prompt], params: GenerationParams, seeds: Sequence[int] | None = None
                         ) -> tuple[list[list[Completion]], list[dict[str, int]]]:
        """`generate`, and per prompt its usage: {"requests", "prompt_tokens", "completion_tokens"}."""
        self._check_supported(params)
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError("one seed per prompt")
        seeds = list(seeds) if seeds is not None else [None] * len(prompts)
        answers = list(self.pool.map(lambda args: self._prompt(*args), zip(prompts, [params] * len(prompts), seeds)))
        return [completions for completions, _ in answers], [usage for _, usage in answers]

    def stream(self, prompt: Prompt, params: GenerationParams, seed: int | None = None) -> Iterator[Delta]:
        self._check_supported(params)
        for index, c in enumerate(self._prompt(prompt, params, seed)[0]):
            yield Delta(index, c.text, c.num_tokens, c.finish_reason)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()
