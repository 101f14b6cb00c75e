"""A small, real groups table built from the synthetic task without a teacher: each prompt gets
responses that are right, wrong, short or off-template, scored by the real scoring core."""

from __future__ import annotations

import json
from pathlib import Path

from advdistill.data.synthetic import make_split
from advdistill.scoring import score_group
from advdistill.teacher.stage import KEPT_DIR, write_shard


def variants(record: dict) -> list[str]:
    solution, answer = record["meta"]["solution"], record["reference"]
    wrong = solution.replace(f"\\boxed{{{answer}}}", f"\\boxed{{{int(answer) + 3}}}")
    lines = solution.split("\n")
    short = "\n".join([lines[0]] + lines[2:])  # drops the "X starts with" line
    plain = solution.replace("<think>", "").replace("</think>", "").replace("<answer>", "").replace("</answer>", "")
    return [solution, wrong, short, plain]


def write_groups(folder: Path, tokenizer, cfg, n: int = 24, seed: int = 0) -> Path:
    rows = []
    for record in make_split("train", n, seed=seed):
        responses = variants(record)
        lengths = [len(tokenizer(r, add_special_tokens=False)["input_ids"]) + 1 for r in responses]
        scored = score_group(responses, lengths, ["stop"] * len(responses), record["reference"], "synthetic",
                             cfg.reward, cfg.advantage)
        rows.append({**{k: record[k] for k in ("id", "task", "question", "reference", "choices")},
                     "meta": json.dumps(record["meta"]), "prompt": "", "responses": responses, "token_lengths": lengths,
                     "finish_reasons": ["stop"] * len(responses), **scored, "teacher": "fixture", "sampling": "{}"})
    write_shard(folder / KEPT_DIR, rows)
    return folder
