"""Records in, generated groups out: the one generation step curation, evaluation and Serve share.

`generate_rows` builds each record's prompt (`advdistill.prompts`), gives every prompt its own
sampling seed, asks the engine and attaches the outputs (`schema.GeneratedGroup`). Ray-free: the
Ray Data actor (`ray_stage.GenerationActor`) and the Serve replica both call it.

A prompt that does not leave the generation budget in the engine's context (prompt tokens +
`max_tokens` > `max_model_len`) is a row problem, not a run's: `fit_context` splits records into
those that fit and quarantine rows (id, reason, token counts) *before* generation, with the
engine's own tokenizer; `generate_rows` refuses (`PromptTooLong`, naming the ids) rather than
hand such a prompt to an engine, where vLLM would fail the whole batch.
"""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

from advdistill.config import PromptConfig
from advdistill.generation.base import Engine, GenerationParams
from advdistill.prompts import build_prompt
from advdistill.schema import GeneratedGroup, Record


def prompt_seed(base_seed: int, prompt_id: str) -> int:
    """A per-prompt sampling seed from the run's seed and the prompt id: the same prompt gets
    the same samples whatever batch or actor it lands in, and on every rerun."""
    digest = hashlib.sha256(f"{base_seed}/{prompt_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


class PromptTooLong(ValueError):
    """Prompts that leave no room for the generation budget in the engine's context."""


def prompt_tokens(tokenizer: Any, prompts: Sequence[str]) -> list[int]:
    """Token counts of rendered prompts as an engine sees them (special tokens included: vLLM
    adds a BOS where the tokenizer has one, so this never undercounts)."""
    if not prompts:
        return []
    return [len(ids) for ids in tokenizer(list(prompts), add_special_tokens=True)["input_ids"]]


def fit_context(records: Sequence[Record], tokenizer: Any, *, max_model_len: int, max_tokens: int,
                prompt: PromptConfig, few_shot: int) -> tuple[list[Record], list[dict[str, Any]]]:
    """The records whose prompt leaves `max_tokens` in a `max_model_len` context, and a
    quarantine row (id, reason, prompt_tokens, limit) for each other one."""
    limit = max_model_len - max_tokens
    texts = [build_prompt(tokenizer, r, few_shot=few_shot, prompt_cfg=prompt) for r in records]
    fitting, quarantined = [], []
    for record, n in zip(records, prompt_tokens(tokenizer, texts)):
        if n <= limit:
            fitting.append(record)
        else:
            quarantined.append({"id": record["id"], "reason": too_long_reason(n, max_model_len, max_tokens),
                                "prompt_tokens": n, "limit": limit})
    return fitting, quarantined


def too_long_reason(tokens: int, max_model_len: int, max_tokens: int) -> str:
    return (f"prompt too long: {tokens} tokens + {max_tokens} to generate exceed the engine's context of "
            f"{max_model_len} (at most {max_model_len - max_tokens} prompt tokens)")


def generate_rows(engine: Engine, records: Sequence[Record], params: GenerationParams, *, prompt: PromptConfig,
                  few_shot: int, seed: int, max_model_len: int | None = None,
                  seeding: str = "per_prompt") -> list[GeneratedGroup]:
    """Each record with its prompt and the engine's `params.n` responses (text, token counts,
    finish reasons). Sampled prompts get `prompt_seed(seed, id)` with `seeding` per_prompt; with
    per_batch none (the engine's own generator); greedy ones need none. Any other key of a
    record rides along. With `max_model_len`, prompts that leave less than `params.max_tokens`
    of it raise `PromptTooLong` before anything is generated."""
    prompts = [build_prompt(engine.tokenizer, r, few_shot=few_shot, prompt_cfg=prompt) for r in records]
    if max_model_len is not None:
        limit = max_model_len - params.max_tokens
        over = [(r["id"], n) for r, n in zip(records, prompt_tokens(engine.tokenizer, prompts)) if n > limit]
        if over:
            shown = ", ".join(f"{i} ({n} tokens)" for i, n in over[:5])
            raise PromptTooLong(f"{len(over)} prompt(s) leave no room for {params.max_tokens} new tokens in a context of "
                                f"{max_model_len} (at most {limit} prompt tokens): {shown}")
    seeds = [prompt_seed(seed, r["id"]) for r in records] if params.temperature > 0 and seeding == "per_prompt" else None
    outputs = engine.generate(prompts, params, seeds)
    return [{**record, "prompt": text, "responses": [o.text for o in outs], "token_lengths": [o.num_tokens for o in outs],
             "finish_reasons": [o.finish_reason for o in outs]}
            for record, text, outs in zip(records, prompts, outputs)]
