"""Records in, generated groups out: the one generation step curation, evaluation and Serve share.

`generate_rows` builds each record's prompt (`advdistill.prompts`), gives every prompt its own
sampling seed, asks the engine and attaches the outputs (`schema.GeneratedGroup`). Ray-free: the
Ray Data actor (`ray_stage.GenerationActor`) and the Serve replica both call it.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

from advdistill.config import PromptConfig
from advdistill.generation.engines import Engine, GenerationParams
from advdistill.prompts import build_prompt
from advdistill.schema import GeneratedGroup, Record


def prompt_seed(base_seed: int, prompt_id: str) -> int:
    """A per-prompt sampling seed from the run's seed and the prompt id: the same prompt gets
    the same samples whatever batch or actor it lands in, and on every rerun."""
    digest = hashlib.sha256(f"{base_seed}/{prompt_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def generate_rows(engine: Engine, records: Sequence[Record], params: GenerationParams, *, prompt: PromptConfig,
                  few_shot: int, seed: int) -> list[GeneratedGroup]:
    """Each record with its prompt and the engine's `params.n` responses (text, token counts,
    finish reasons). Sampled prompts get `prompt_seed(seed, id)`; greedy ones need none. Any
    other key of a record rides along."""
    prompts = [build_prompt(engine.tokenizer, r, few_shot=few_shot, prompt_cfg=prompt) for r in records]
    seeds = [prompt_seed(seed, r["id"]) for r in records] if params.temperature > 0 else None
    outputs = engine.generate(prompts, params, seeds)
    return [{**record, "prompt": text, "responses": [o.text for o in outs], "token_lengths": [o.num_tokens for o in outs],
             "finish_reasons": [o.finish_reason for o in outs]}
            for record, text, outs in zip(records, prompts, outputs)]
