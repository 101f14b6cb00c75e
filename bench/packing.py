"""Shared-prefix packing benchmark (issue: Benchmarks, target 3).

1. One training step (forward+backward of the AdvDistill loss) on a group of K responses: K
   separate `prompt + response` sequences vs one shared-prefix packed sequence, with prompt and
   response lengths equal (goal <= 0.7x).
2. With `--groups DIR` (a curate output, e.g. runs/tiny/curate): the effect on the tiny default
   run — the same Ray Train job with and without `train.shared_prefix_packing`, seconds per step.

    python bench/packing.py [--groups runs/tiny/curate]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from common import REPO, header, interleaved

from advdistill.loss import advdistill_loss
from advdistill.train.collate import group_batch, packed_group_batch
from advdistill.train.model import ResponseLogProbs

INPUTS = ("input_ids", "labels", "attention_mask", "position_ids", "block_mask", "gather_index")


def synthetic_group(k: int, prompt: int, response: int, vocab: int) -> dict:
    g = torch.Generator().manual_seed(0)
    ids = lambda n: torch.randint(3, vocab, (n,), generator=g).tolist()  # noqa: E731
    return {"prompt_ids": ids(prompt), "response_ids": [ids(response) for _ in range(k)],
            "advantages": torch.randn(k, generator=g).tolist(), "correct": [i % 2 == 0 for i in range(k)]}


def train_step(model: ResponseLogProbs, batch: dict) -> None:
    model.zero_grad(set_to_none=True)
    logprobs, mask = model(**{k: batch[k] for k in INPUTS if k in batch})
    advdistill_loss(logprobs, mask, batch["advantages"], batch["correct"]).backward()


def tiny_run_effect(groups: str, steps: int) -> dict[str, float]:
    from advdistill.cli import init_ray
    from advdistill.config import load_config
    from advdistill.train.trainer import train

    init_ray()
    seconds = {}
    for packed in (False, True):
        cfg = load_config(REPO / "configs" / "tiny.yaml", [f"train.shared_prefix_packing={packed}",
                                                           f"train.max_steps={steps}", "train.checkpoint_every=100000",
                                                           f"teacher={REPO / 'models/tiny-teacher'}",
                                                           f"student={REPO / 'models/tiny-student'}"])
        with tempfile.TemporaryDirectory() as out:
            train(cfg, groups, out)
            history = [json.loads(line) for line in open(f"{out}/metrics.jsonl")]
        seconds[packed] = statistics.median(h["step_seconds"] for h in history[1:])  # first step warms up
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--length", type=int, default=128, help="prompt length = response length")
    # Qwen2.5-0.5B's layer (hidden 896, 14 query / 2 KV heads, MLP 4864), 4 of its 24 layers, a
    # 4,096-token vocabulary: the output head costs the same on both sides, so a full-size head
    # on a 4-layer body would hide what packing saves in the body.
    parser.add_argument("--model", default="896,4,14,2,4864", help="hidden,layers,heads,kv_heads,mlp of the random Qwen2 timed")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--groups", help="curate output for the tiny-run comparison (skipped if absent)")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(2)
    header("Shared-prefix packing", f"python bench/packing.py --model {args.model}" + (f" --groups {args.groups}" if args.groups else ""))

    hidden, layers, heads, kv_heads, mlp = map(int, args.model.split(","))
    config = Qwen2Config(vocab_size=4096, hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=4096)
    torch.manual_seed(0)
    model = ResponseLogProbs(Qwen2ForCausalLM(config))
    group = synthetic_group(args.k, args.length, args.length, config.vocab_size)
    separate, packed = group_batch(group, pad_id=0), packed_group_batch(group, pad_id=0)
    times = interleaved({"separate": lambda: train_step(model, separate), "packed": lambda: train_step(model, packed)},
                        repeats=args.repeats)
    ratio = times["packed"] / times["separate"]
    print(f"- one group, K={args.k}, prompt = response = {args.length} tokens, Qwen2 hidden {hidden} x {layers} layers, "
          f"{heads}/{kv_heads} heads, MLP {mlp}, vocab 4096 "
          f"(median of {args.repeats}): packed / separate step time **{ratio:.3f}x** (goal <= 0.7x)")
    result = {"step_time_ratio": ratio}
    if args.groups:
        seconds = tiny_run_effect(args.groups, args.steps)
        result["tiny_run_ratio"] = seconds[True] / seconds[False]
        print(f"- the tiny default run (configs/tiny.yaml, 2 gloo workers, median seconds per optimizer step over "
              f"{args.steps} steps): packed / separate **{result['tiny_run_ratio']:.3f}x**")
    print("\n" + json.dumps(result))


if __name__ == "__main__":
    main()
