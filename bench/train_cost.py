"""AdvDistill vs SFT training cost, like for like (issue 16 item 3).

The same curated groups, the same epochs, the same optimizer (AdamW, the tiny config's settings),
in one process through the real loss path (`advdistill.train.loop.make_batch` and `loss_terms`):
AdvDistill trains on the K responses of each group, SFT on its best one (SPEC §5). Printed per
side, with shared-prefix packing off and on: seconds of optimizer steps (forward + backward of
the step's groups, gradient clipping, AdamW; no data loading), tokens the model read, and the
AdvDistill / SFT ratio (goal <= 1.5x; the paper's Table 3 reports 4.5x). The four trainings run
in lockstep, one optimizer step of each in turn, so the machine's drift hits them alike.

Groups: the tiny teacher (models/tiny-teacher, transformers `generate`) samples K = 8 responses
for synthetic-task prompts, scored by the real scoring core, kept by the keep rule — the curate
stage's work without Ray; or `--groups DIR`, a curate output (its groups/*.parquet).

    python bench/train_cost.py [--prompts 48] [--epochs 2] [--groups runs/tiny/curate]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from common import REPO, header

from advdistill.config import load_config, with_overrides
from advdistill.train.collate import tokenize_group
from advdistill.train.group_batches import group_tokens
from advdistill.train.loop import epoch_order, loss_terms, make_batch, packed_attention, step_groups
from advdistill.train.model import ResponseLogProbs, param_groups

SIDES = [("advdistill", False), ("sft", False), ("advdistill", True), ("sft", True)]


def teacher_groups(cfg, n_prompts: int, seed: int) -> list[dict]:
    """Groups as the curate stage makes them (SPEC §1, §3-5), in this process."""
    from advdistill.curate.stage import score_curated
    from advdistill.data.synthetic import make_split
    from advdistill.generation.base import GenerationParams
    from advdistill.generation.engines import HFEngine
    from advdistill.generation.rows import generate_rows

    engine = HFEngine(str(REPO / cfg.teacher), cfg.curate.engine)
    s = cfg.curate.sampling
    rows = generate_rows(engine, make_split("train", n_prompts, seed=seed), GenerationParams.from_sampling(s),
                         prompt=cfg.prompt, few_shot=cfg.prompt.few_shot, seed=s.seed)
    return [group for group in (score_curated(row, cfg) for row in rows) if group["keep"]]


def parquet_groups(folder: str) -> list[dict]:
    from advdistill.curate.store import read_shards
    from advdistill.schema import from_arrow
    from advdistill.train.trainer import groups_folder

    return sorted(from_arrow(read_shards(groups_folder(folder))), key=lambda r: r["id"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=48, help="synthetic prompts the teacher samples (before the keep rule)")
    parser.add_argument("--groups", help="a curate output folder instead of sampling here")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a machine whose cores other work shares, a parallel op waits "
                             "on a descheduled thread)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    header("AdvDistill vs SFT training cost, like for like",
           f"python bench/train_cost.py --prompts {args.prompts} --epochs {args.epochs} --threads {args.threads}"
           + (f" --groups {args.groups}" if args.groups else ""))

    base = load_config(REPO / "configs" / "tiny.yaml")
    rows = parquet_groups(args.groups) if args.groups else teacher_groups(base, args.prompts, args.seed)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    student = str(REPO / base.student)
    tokenizer = AutoTokenizer.from_pretrained(student)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    runs = {}
    for mode, packed in SIDES:
        cfg = with_overrides(base, {"train.method": mode, "train.shared_prefix_packing": packed})
        groups = [g for g in (tokenize_group(r, tokenizer, cfg) for r in rows) if g["keep"]]
        torch.manual_seed(cfg.train.seed)
        lm = AutoModelForCausalLM.from_pretrained(student, dtype=torch.float32)
        model = ResponseLogProbs(lm, chunk_size=cfg.train.loss.chunk_size,
                                 packed_attention=packed_attention(cfg, "cpu")).train()
        optimizer = torch.optim.AdamW(param_groups(model, cfg.train.weight_decay), lr=cfg.train.learning_rate)
        runs[(mode, packed)] = {"cfg": cfg, "groups": groups, "model": model, "optimizer": optimizer,
                                "seconds": 0.0, "tokens": 0, "steps": 0, "step_seconds": []}

    n_groups = len(runs[SIDES[0]]["groups"])
    per_step = base.train.groups_per_step
    steps_per_epoch = -(-n_groups // per_step)
    responses = [len(g["response_ids"]) for g in runs[("advdistill", False)]["groups"]]
    print(f"{n_groups} kept groups ({len(rows)} curated), K = {max(responses)} responses each (mean "
          f"{sum(responses) / len(responses):.1f}); {args.epochs} epochs x {steps_per_epoch} optimizer steps of "
          f"{per_step} groups; student {base.student}, AdamW lr {base.train.lr}, torch threads {args.threads}\n")

    for epoch in range(args.epochs):
        order = epoch_order(n_groups, epoch, base.train.seed)
        for step in range(steps_per_epoch):
            indices = step_groups(order, step, per_step)
            for side in SIDES:  # lockstep: one optimizer step of each side in turn
                run = runs[side]
                cfg, model, optimizer = run["cfg"], run["model"], run["optimizer"]
                batches = [make_batch(run["groups"][i], cfg, pad_id) for i in indices]  # collation is not timed
                start = time.perf_counter()
                for batch in batches:
                    (loss_terms(model, batch, cfg)["loss"] / len(indices)).backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                run["step_seconds"].append(time.perf_counter() - start)
                run["seconds"] += run["step_seconds"][-1]
                run["tokens"] += sum(group_tokens(run["groups"][i], packed=side[1]) for i in indices)
                run["steps"] += 1

    print("| side | packing | optimizer steps | seconds | tokens read | tokens/s |")
    print("|---|---|---|---|---|---|")
    for (mode, packed), run in runs.items():
        print(f"| {mode} | {'on' if packed else 'off'} | {run['steps']} | {run['seconds']:.2f} | {run['tokens']:,} | "
              f"{run['tokens'] / run['seconds']:,.0f} |")
    result = {}
    print()
    for packed in (False, True):
        a, s = runs[("advdistill", packed)], runs[("sft", packed)]
        time_ratio, token_ratio = a["seconds"] / s["seconds"], a["tokens"] / s["tokens"]
        per_token = (a["seconds"] / a["tokens"]) / (s["seconds"] / s["tokens"])
        result[f"packing_{'on' if packed else 'off'}"] = {"time_ratio": time_ratio, "token_ratio": token_ratio,
                                                          "seconds_per_token_ratio": per_token}
        median_ratio = statistics.median(a["step_seconds"]) / statistics.median(s["step_seconds"])
        result[f"packing_{'on' if packed else 'off'}"]["median_step_ratio"] = median_ratio
        print(f"- packing {'on' if packed else 'off'}: AdvDistill / SFT seconds **{time_ratio:.2f}x** (goal <= 1.5x; "
              f"paper 4.5x) = tokens {token_ratio:.2f}x x seconds per token {per_token:.2f}x; "
              f"ratio of median step times {median_ratio:.2f}x")
    best = runs[("advdistill", True)]["seconds"] / min(runs[("sft", False)]["seconds"], runs[("sft", True)]["seconds"])
    result["advdistill_packed_vs_best_sft"] = best
    print(f"- AdvDistill packed / SFT at its fastest: **{best:.2f}x**")
    print("\n" + json.dumps({"groups": n_groups, "epochs": args.epochs,
                             "sides": {f"{m}-{'packed' if p else 'separate'}": {k: r[k] for k in ("seconds", "tokens", "steps")}
                                       for (m, p), r in runs.items()}, **result}))


if __name__ == "__main__":
    main()
