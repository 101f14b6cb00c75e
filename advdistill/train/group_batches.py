"""A tokenised group as model inputs, in the two layouts the student trains on — pure torch.

Kept apart from `collate` (which needs the config, the prompt builder and the scoring core) so
that `bench/gpu_train.py` can build real batches on a machine with torch and transformers only.

- `group_batch`: N right-padded sequences `prompt + response_i`;
- `packed_group_batch`: ONE sequence, the prompt once then every response (shared-prefix packing),
  with `segment_ids` saying which part each token belongs to: -1 for the prompt, i for response i.
  A token sees the prompt and the earlier tokens of its own response. The model turns the segment
  ids into whatever its attention backend needs (a dense mask, a FlexAttention block mask, or
  per-segment attention calls: `advdistill.train.attention`).
"""

from __future__ import annotations

from typing import Any

import torch

from advdistill.loss import IGNORE_INDEX

PROMPT_SEGMENT = -1
# The keys of a batch the model reads (`ResponseLogProbs.forward`); the rest (advantages,
# correct) are the loss's.
MODEL_INPUTS = ("input_ids", "labels", "attention_mask", "position_ids", "segment_ids", "gather_index")


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The part of a group's batch that goes into the model, whichever the layout."""
    return {key: batch[key] for key in MODEL_INPUTS if key in batch}


def group_batch(group: dict[str, Any], pad_id: int) -> dict[str, torch.Tensor]:
    """One group as N right-padded sequences `prompt + response_i`; labels hold the response
    tokens and IGNORE_INDEX elsewhere."""
    prompt = list(group["prompt_ids"])
    sequences = [prompt + list(r) for r in group["response_ids"]]
    width = max(len(s) for s in sequences)
    n = len(sequences)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        input_ids[i, : len(seq)] = torch.tensor(seq)
        labels[i, len(prompt) : len(seq)] = torch.tensor(seq[len(prompt) :])
        attention_mask[i, : len(seq)] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "advantages": torch.tensor(group["advantages"], dtype=torch.float32),
        "correct": torch.tensor(group["correct"], dtype=torch.bool),
    }


def packed_group_batch(group: dict[str, Any], pad_id: int) -> dict[str, torch.Tensor]:
    """One group as ONE sequence: the prompt once, then every response (shared-prefix packing).

    Each response attends to the prompt and to its own earlier tokens only, and its positions
    continue from the end of the prompt, so its log-probs equal those of `prompt + response` on
    its own; the prompt is computed once instead of N times. The first token of every response is
    predicted from the prompt's last position; `gather_index` says which position predicts each
    response token ((N, R) like the labels). `pad_id` is unused (nothing is padded) and kept so
    both layouts are called alike."""
    prompt = list(group["prompt_ids"])
    responses = [list(r) for r in group["response_ids"]]
    p, n, width = len(prompt), len(responses), max(len(r) for r in responses)
    ids, positions, segment = list(prompt), list(range(p)), [PROMPT_SEGMENT] * p
    gather = torch.zeros((n, width), dtype=torch.long)
    labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
    for i, response in enumerate(responses):
        start = len(ids)
        ids += response
        positions += range(p, p + len(response))
        segment += [i] * len(response)
        # token j of response i is predicted from position start + j - 1 (the prompt's last for j = 0)
        # (a response cut at the teacher's limit may have no tokens at all: nothing to gather)
        predicting = [p - 1] + list(range(start, start + len(response) - 1))
        gather[i, : len(response)] = torch.tensor(predicting[: len(response)], dtype=torch.long)
        labels[i, : len(response)] = torch.tensor(response)
    return {
        "input_ids": torch.tensor([ids]),
        "position_ids": torch.tensor([positions]),
        "segment_ids": torch.tensor([segment]),  # (1, L): -1 = prompt, i = response i
        "gather_index": gather,
        "labels": labels,
        "advantages": torch.tensor(group["advantages"], dtype=torch.float32),
        "correct": torch.tensor(group["correct"], dtype=torch.bool),
    }


def group_tokens(group: dict[str, Any], packed: bool = False) -> int:
    """Tokens the model reads for a group: N separate sequences, or one packed sequence."""
    responses = sum(len(r) for r in group["response_ids"])
    prompts = len(group["prompt_ids"]) * (1 if packed else len(group["response_ids"]))
    return prompts + responses
