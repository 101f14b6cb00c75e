"""Shared-prefix packing benchmark (issue: Benchmarks, target 3; issue 16 item 2).

1. One training step (forward+backward of the AdvDistill loss) on a group of K responses: K
   separate `prompt + response` sequences vs one shared-prefix packed sequence, with prompt and
   response lengths equal, for each attention backend of the packed sequence
   (`train.packed_attention`): dense mask (every score of the L x L square), segments (per-segment
   SDPA, only visible scores) and, where it can train, FlexAttention (block-sparse, compiled).
   Goals: packed / separate <= 0.7x on the 256-wide toy shape, <= 0.6x on Qwen2.5-0.5B's layer
   shape (both timed by default).
   FlexAttention has no backward on CPU (torch 2.13): there the script times forward passes only,
   after warm-up, and reports the compile cost (the first call) apart.
2. With `--groups DIR` (a curate output, e.g. runs/tiny/curate): the effect on the tiny default
   run — the same Ray Train job with and without `train.shared_prefix_packing`, seconds per step.

    python bench/packing.py [--threads 1] [--groups runs/tiny/curate]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from common import REPO, header, interleaved

from advdistill.config import LossConfig
from advdistill.loss import advdistill_loss
from advdistill.train.group_batches import group_batch, model_inputs, packed_group_batch
from advdistill.train.model import ResponseLogProbs

LOSS = LossConfig()
# hidden, layers, heads, KV heads, MLP. Qwen2.5-0.5B's layer (hidden 896, 14 query / 2 KV heads,
# MLP 4864), 4 of its 24 layers; and a 256-wide toy model, where attention is a large share.
# Both with a 4,096-token vocabulary: the output head costs the same on both sides, so a full-size
# head on a 4-layer body would hide what packing saves in the body.
SHAPES = {"toy": "256,4,4,4,1024", "qwen2.5-0.5b-layers": "896,4,14,2,4864"}
GOALS = {"toy": 0.7, "qwen2.5-0.5b-layers": 0.6}


def synthetic_group(k: int, prompt: int, response: int, vocab: int) -> dict:
    g = torch.Generator().manual_seed(0)
    ids = lambda n: torch.randint(3, vocab, (n,), generator=g).tolist()  # noqa: E731
    return {"prompt_ids": ids(prompt), "response_ids": [ids(response) for _ in range(k)],
            "advantages": torch.randn(k, generator=g).tolist(), "correct": [i % 2 == 0 for i in range(k)]}


def train_step(model: ResponseLogProbs, batch: dict) -> None:
    model.zero_grad(set_to_none=True)
    logprobs, mask = model(**model_inputs(batch))
    advdistill_loss(logprobs, mask, batch["advantages"], batch["correct"], tau=LOSS.tau, lam=LOSS.lam,
                    delta=LOSS.delta).backward()


@torch.no_grad()
def forward_only(model: ResponseLogProbs, batch: dict) -> None:
    model(**model_inputs(batch))


def flex_trains_here(device: torch.device) -> bool:
    """FlexAttention's backward exists on CUDA only (torch 2.13: NotImplementedError on CPU)."""
    return device.type == "cuda"


def measure_shape(name: str, spec: str, k: int, length: int, repeats: int, device: torch.device) -> dict:
    hidden, layers, heads, kv_heads, mlp = map(int, spec.split(","))
    config = Qwen2Config(vocab_size=4096, hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=4096)
    torch.manual_seed(0)
    lm = Qwen2ForCausalLM(config).to(device)
    # Separate sequences and the dense mask run on the model as transformers builds it (SDPA);
    # segments and flex on copies with the same weights routed through the packed dispatcher.
    chunk = LOSS.chunk_size
    models = {"separate": ResponseLogProbs(lm, chunk), "packed-dense": ResponseLogProbs(lm, chunk),
              "packed-segments": ResponseLogProbs(copy.deepcopy(lm), chunk, packed_attention="segments"),
              "packed-flex": ResponseLogProbs(copy.deepcopy(lm), chunk, packed_attention="flex")}
    group = synthetic_group(k, length, length, config.vocab_size)
    on = lambda batch: {key: value.to(device) for key, value in batch.items()}  # noqa: E731
    batches = {"separate": on(group_batch(group, pad_id=0))}
    batches.update({side: on(packed_group_batch(group, pad_id=0)) for side in models if side != "separate"})
    flex_steps = flex_trains_here(device)

    # Compile cost: the first flex call (torch.compile of the kernel and of the mask) minus a warm call.
    run_flex = (lambda: train_step(models["packed-flex"], batches["packed-flex"])) if flex_steps else (
        lambda: forward_only(models["packed-flex"], batches["packed-flex"]))
    start = time.perf_counter()
    run_flex()
    cold = time.perf_counter() - start
    steps = {side: (lambda side=side: train_step(models[side], batches[side]))
             for side in models if side != "packed-flex" or flex_steps}
    times = interleaved(steps, repeats=repeats)
    result = {"shape": name, "model": spec, "step_seconds": times,
              "ratio": {side: times[side] / times["separate"] for side in times if side != "separate"}}
    if not flex_steps:
        fwd = interleaved({side: (lambda side=side: forward_only(models[side], batches[side])) for side in models},
                          repeats=repeats)
        result["forward_seconds"] = fwd
        result["forward_ratio"] = {side: fwd[side] / fwd["separate"] for side in fwd if side != "separate"}
        warm = fwd["packed-flex"]
    else:
        warm = times["packed-flex"]
    result["flex_compile_seconds"] = cold - warm
    return result


def report_shape(r: dict, k: int, length: int, repeats: int) -> None:
    hidden, layers, heads, kv_heads, mlp = map(int, r["model"].split(","))
    goal = GOALS.get(r["shape"])
    print(f"- {r['shape']}: Qwen2 hidden {hidden} x {layers} layers, {heads}/{kv_heads} heads, MLP {mlp}, vocab 4096; "
          f"one group, K={k}, prompt = response = {length} tokens; step time / separate sequences "
          f"(median of {repeats}, interleaved):")
    for side, ratio in r["ratio"].items():
        mark = f" (goal <= {goal}x)" if goal else ""
        print(f"  - {side}: **{ratio:.3f}x**{mark}")
    if "forward_ratio" in r:
        print("  - packed-flex cannot train on this device (no FlexAttention backward on CPU); forward only, "
              "after warm-up, / separate: " + ", ".join(f"{side} {ratio:.3f}x" for side, ratio in r["forward_ratio"].items()))
    print(f"  - FlexAttention compile cost (first call minus a warm one): {r['flex_compile_seconds']:.1f} s")


def tiny_run_effect(groups: str, steps: int) -> dict[str, float]:
    from advdistill.local_ray import init_ray
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
    parser.add_argument("--shapes", default=";".join(SHAPES),
                        help=f"named shapes ({', '.join(f'{n}={s}' for n, s in SHAPES.items())}) or "
                             "hidden,layers,heads,kv_heads,mlp specs separated by ';'")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads (1 on a machine whose cores other work shares: a parallel op "
                             "then waits on a descheduled thread, which penalises many small ops)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--groups", help="curate output for the tiny-run comparison (skipped if absent)")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    header("Shared-prefix packing", f"python bench/packing.py --threads {args.threads}"
           + (f" --groups {args.groups}" if args.groups else ""))

    results = []
    for name in args.shapes.split(";"):
        spec = SHAPES.get(name, name)
        r = measure_shape(name, spec, args.k, args.length, args.repeats, torch.device(args.device))
        report_shape(r, args.k, args.length, args.repeats)
        results.append(r)
    result = {"threads": args.threads, "shapes": results}
    if args.groups:
        seconds = tiny_run_effect(args.groups, args.steps)
        result["tiny_run_ratio"] = seconds[True] / seconds[False]
        print(f"- the tiny default run (configs/tiny.yaml, 2 gloo workers, median seconds per optimizer step over "
              f"{args.steps} steps): packed / separate **{result['tiny_run_ratio']:.3f}x**")
    print("\n" + json.dumps(result))


if __name__ == "__main__":
    main()
