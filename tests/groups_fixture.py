"""A small, real groups table built from the synthetic task without a teacher: each prompt gets
responses that are right, wrong, short or off-template, scored by the real scoring core."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from advdistill.curate.store import CurateOutput, write_shard
from advdistill.data.synthetic import make_split
from advdistill.schema import CuratedGroup, arrow_schema, to_arrow
from advdistill.scoring import score_group


def variants(record: dict) -> list[str]:
    solution, answer = record["meta"]["solution"], record["reference"]
    wrong = solution.replace(f"\\boxed{{{answer}}}", f"\\boxed{{{int(answer) + 3}}}")
    lines = solution.split("\n")
    short = "\n".join([lines[0]] + lines[2:])  # drops the "X starts with" line
    plain = solution.replace("<think>", "").replace("</think>", "").replace("<answer>", "").replace("</answer>", "")
    return [solution, wrong, short, plain]


def write_groups(folder: Path, tokenizer, cfg, n: int = 24, seed: int = 0,
                 teacher_cuts: Callable[[int], set[int]] = lambda i: set()) -> Path:
    """`teacher_cuts(i)`: the responses of group i marked as cut at the teacher's token limit
    (finish reason "length", hence incorrect)."""
    rows = []
    for i, record in enumerate(make_split("train", n, seed=seed)):
        responses = variants(record)
        lengths = [len(tokenizer(r, add_special_tokens=False)["input_ids"]) + 1 for r in responses]
        finish_reasons = ["length" if j in teacher_cuts(i) else "stop" for j in range(len(responses))]
        scored = score_group(responses, lengths, finish_reasons, record["reference"], "synthetic",
                             cfg.reward, cfg.advantage)
        rows.append({**record, "prompt": "", "responses": responses, "token_lengths": lengths,
                     "finish_reasons": finish_reasons, **scored, "teacher": "fixture", "sampling": "{}"})
    write_shard(CurateOutput(folder).groups, to_arrow(rows, arrow_schema(CuratedGroup)))
    return folder
