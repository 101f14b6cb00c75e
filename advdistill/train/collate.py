"""From a curated group (`schema.CuratedGroup`) to a tokenised one (`schema.TokenisedGroup`) and
the tensors of one micro-batch — pure, no Ray.

A group is tokenised as the *zero-shot student prompt* followed by each response; prompt tokens
are masked out of the loss (SPEC §6). A response the teacher ended itself (finish reason "stop")
gets the student's end-of-turn token appended, so the student learns to stop where evaluation
stops it; a response cut at the teacher's token limit ("length") gets none, so the student never
learns to stop mid-sentence. A response that does not fit in `max_seq_len` is cut, and the cut
is counted (`truncated`, `truncated_responses`); a group whose prompt alone fills `max_seq_len`
is skipped — `keep` False, `skipped` its reason, counted in the training result — rather than
stopping the run. `responses_per_group` K' < K keeps the first K'
responses, recomputes their advantages and applies the keep rule again (SPEC §5: a group whose
first K' responses are all incorrect is dropped); then the training method (`train.method`,
`advdistill.methods`) picks the responses it trains on. A fixed share of the groups, by a
hash of their id, is held out for validation (`val`).
"""

from __future__ import annotations

import hashlib
from typing import Any

from advdistill.config import ExperimentConfig
from advdistill.prompts import build_prompt, end_of_turn_token_ids
from advdistill.schema import ENDED, CuratedGroup, TokenisedGroup
from advdistill.scoring import group_advantages, keep_group
from advdistill.methods import get_method
# The tensor layouts live in a pure-torch module (bench/gpu_train.py imports it without the config
# stack); re-exported here, where the rest of collation is.
from advdistill.train.group_batches import group_batch, group_tokens, packed_group_batch  # noqa: F401


def select_responses(row: CuratedGroup, cfg: ExperimentConfig) -> dict[str, Any]:
    """The responses a group trains on, with their advantages, correctness and finish reasons,
    and whether the group is kept (`keep`): with K' < K the keep rule is applied again to the
    first K' responses, since the curated group was kept on all K."""
    responses, rewards = list(row["responses"]), list(row["rewards"])
    correct, lengths = list(row["correct"]), list(row["token_lengths"])
    finish_reasons, advantages = list(row["finish_reasons"]), list(row["advantages"])
    k = cfg.train.responses_per_group
    if k is not None and k < len(responses):
        responses, rewards, correct = responses[:k], rewards[:k], correct[:k]
        lengths, finish_reasons = lengths[:k], finish_reasons[:k]
        advantages = group_advantages(rewards, cfg.advantage).tolist()
    candidates = {"responses": responses, "advantages": advantages, "correct": correct, "finish_reasons": finish_reasons,
                  "token_lengths": lengths}
    chosen = get_method(cfg.train.method).select(candidates)
    selected = {key: [candidates[key][i] for i in chosen] for key in ("responses", "advantages", "correct", "finish_reasons")}
    return {**selected, "keep": keep_group(correct)}


def is_validation(group_id: str, fraction: float) -> bool:
    """A fixed, seed-free holdout by id hash: the same groups are held out on every run."""
    bucket = int(hashlib.sha256(group_id.encode()).hexdigest()[:8], 16) % 10_000
    return bucket < fraction * 10_000


def response_token_ids(encoded: list[list[int]], finish_reasons: list[str], end_of_turn_id: int,
                       budget: int) -> tuple[list[list[int]], list[bool]]:
    """Each response's training tokens and whether `max_seq_len` cut it: the end-of-turn token
    after a response the teacher ended, nothing after one cut at the teacher's token limit, then
    at most `budget` tokens."""
    ids, truncated = [], []
    for tokens, finish in zip(encoded, finish_reasons, strict=True):
        tokens = list(tokens) + ([end_of_turn_id] if finish == ENDED else [])
        truncated.append(len(tokens) > budget)
        ids.append(tokens[:budget])
    return ids, truncated


def tokenize_group(row: CuratedGroup, tokenizer: Any, cfg: ExperimentConfig,
                   end_of_turn_id: int | None = None) -> TokenisedGroup:
    """Token ids of one group: the shared prompt and each response (end-of-turn appended where
    the teacher ended it, cut to fit). `keep` is False for a group the K' keep rule drops (it is
    tokenised all the same, so the caller can count it). `end_of_turn_id` defaults to the
    student tokenizer's (`end_of_turn_token_ids`); callers tokenising many groups pass it once."""
    record = {"task": row["task"], "question": row["question"], "choices": row.get("choices")}
    prompt = build_prompt(tokenizer, record, few_shot=0, prompt_cfg=cfg.prompt)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    chosen = select_responses(row, cfg)
    budget = cfg.train.max_seq_len - len(prompt_ids)
    if budget < 1:
        return skipped_group(row["id"], cfg, f"prompt too long: the prompt alone ({len(prompt_ids)} tokens) fills "
                                             f"train.max_seq_len ({cfg.train.max_seq_len})")
    if end_of_turn_id is None:
        end_of_turn_id = student_end_of_turn_id(tokenizer)
    encoded = tokenizer(chosen["responses"], add_special_tokens=False)["input_ids"]
    response_ids, truncated = response_token_ids(encoded, chosen["finish_reasons"], end_of_turn_id, budget)
    return {
        "id": row["id"],
        "keep": chosen["keep"],
        "val": is_validation(row["id"], cfg.train.val_fraction),
        "prompt_ids": prompt_ids,
        "response_ids": response_ids,
        "advantages": [float(a) for a in chosen["advantages"]],
        "correct": [bool(c) for c in chosen["correct"]],
        "truncated": truncated,
        "truncated_responses": sum(truncated),
        "skipped": None,
    }


def skipped_group(group_id: str, cfg: ExperimentConfig, reason: str) -> TokenisedGroup:
    """A group that is not trained on (`keep` False), with the reason it is counted under."""
    return {"id": group_id, "keep": False, "val": is_validation(group_id, cfg.train.val_fraction), "prompt_ids": [],
            "response_ids": [], "advantages": [], "correct": [], "truncated": [], "truncated_responses": 0,
            "skipped": reason}


def student_end_of_turn_id(tokenizer: Any) -> int:
    """The token a trained student ends its turn with: the chat template's end-of-turn token
    (else EOS), the one generation stops at."""
    ids = end_of_turn_token_ids(tokenizer)
    if not ids:
        raise ValueError("the student tokenizer has neither a chat template end-of-turn token nor an EOS token")
    return ids[0]
