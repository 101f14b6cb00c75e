"""Part 3 of bench/gpu_slot.sh: does FlexAttention recompile for every packed length? (at most 90 s)

Packed groups have a different length each (prompt + K responses), and FlexAttention runs through
`torch.compile` (transformers compiles `flex_attention`; `create_block_mask` compiles the mask).
If every new length compiled again, training would spend its time compiling, and after dynamo's
recompile limit (8) fall back to eager FlexAttention, which materialises every score. Measured on
a Qwen2.5-1.5B-shaped student (bf16, activation checkpointing, forward + backward of the
AdvDistill loss, no optimizer step):

1. the per-segment backend (`segments`: SDPA, no compile) on the last group: steady-state seconds;
2. FlexAttention on 5 packed groups of different lengths, one after another: each step's seconds,
   the graphs dynamo compiled during it (`counters["stats"]["unique_graphs"]`) and the
   recompilations it logged (`TORCH_LOGS=recompiles`, reasons kept);
3. FlexAttention again on the last group: steady-state seconds, and its ratio to segments.

Each stage is written to the JSON as it ends; a failing flex step is recorded, not fatal. On CPU
(`--tiny`, the dry run) only the segments stage runs: torch has no FlexAttention backward on CPU.

    TORCH_LOGS=recompiles python bench/slot_flex.py --json OUT/part3-flex.json [--tiny]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
import traceback
from typing import Any

from common import write_json  # also puts the repository on sys.path

import gpu_train  # noqa: E402 - after common: the student's shapes, the group maker, the loss settings
import torch  # noqa: E402
from transformers import Qwen2Config, Qwen2ForCausalLM  # noqa: E402

from advdistill.loss import advdistill_loss  # noqa: E402
from advdistill.train.attention import flex_available, use_packed_attention  # noqa: E402
from advdistill.train.group_batches import model_inputs, packed_group_batch  # noqa: E402
from advdistill.train.model import ResponseLogProbs, enable_activation_checkpointing  # noqa: E402

LENGTHS = 5  # packed groups of different lengths


class RecompileLog(logging.Handler):
    """Keeps dynamo's recompilation messages (the `recompiles` log artifact)."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "Recompiling" in message:
            self.messages.append(message[:600])


def distinct_lengths(prompt: int, low: int, high: int, vocab: int) -> list[dict]:
    """LENGTHS seeded groups of K = 8 whose packed lengths all differ."""
    groups: dict[int, dict] = {}
    seed = 10
    while len(groups) < LENGTHS:
        group = gpu_train.make_group(8, prompt, low, high, vocab, seed=seed)
        groups.setdefault(prompt + sum(len(r) for r in group["response_ids"]), group)
        seed += 1
    return list(groups.values())


def step(model: ResponseLogProbs, batch: dict, device: torch.device) -> float:
    start = time.perf_counter()
    logprobs, mask = model(**model_inputs(batch))
    advdistill_loss(logprobs, mask, batch["advantages"], batch["correct"], **gpu_train.LOSS).backward()
    model.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def steady(model: ResponseLogProbs, batch: dict, device: torch.device, repeats: int) -> dict[str, float]:
    step(model, batch, device)  # warm-up (and, for flex, any compile this length needs)
    return {"seconds": statistics.median(step(model, batch, device) for _ in range(repeats))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", required=True)
    parser.add_argument("--tiny", action="store_true", help="toy shape on CPU (the dry run): segments only")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from torch._dynamo.utils import counters

    on_gpu = torch.cuda.is_available() and not args.tiny
    device = torch.device("cuda" if on_gpu else "cpu")
    if not on_gpu:
        torch.set_num_threads(1)
    if not os.environ.get("TORCH_LOGS"):  # bench/gpu_slot.sh sets TORCH_LOGS=recompiles (torch then ignores set_logs)
        torch._logging.set_logs(recompiles=True)
    recompiles = RecompileLog()
    logging.getLogger("torch._dynamo").addHandler(recompiles)

    shape, (prompt, low, high) = (gpu_train.TINY, (16, 8, 32)) if args.tiny else (gpu_train.QWEN25_15B, (256, 512, 2048))
    torch.manual_seed(0)
    config = Qwen2Config(**shape)
    with torch.device(device):
        lm = Qwen2ForCausalLM(config).to(torch.bfloat16 if on_gpu else torch.float32)
    lm.config.use_cache = False
    enable_activation_checkpointing(lm)
    use_packed_attention(lm)
    lm.train()
    batches = [{k: v.to(device) for k, v in packed_group_batch(g, 0).items()}
               for g in distinct_lengths(prompt, low, high, config.vocab_size)]
    result: dict[str, Any] = {"device": torch.cuda.get_device_name(device) if on_gpu else "cpu",
                              "lengths": [int(b["input_ids"].shape[-1]) for b in batches],
                              "torch": torch.__version__}

    segments = ResponseLogProbs(lm, chunk_size=1024, packed_attention="segments")
    result["segments_steady"] = steady(segments, batches[-1], device, args.repeats)
    write_json(args.json, result)

    if not on_gpu:
        result["flex"] = {"skipped": "no CUDA (torch has no FlexAttention backward on CPU)"}
    elif not flex_available():
        result["flex"] = {"skipped": "this torch has no FlexAttention"}
    else:
        flex = ResponseLogProbs(lm, chunk_size=1024, packed_attention="flex")
        per_length = []
        result["flex"] = {"per_length": per_length}
        for batch in batches:
            graphs, logged = counters["stats"]["unique_graphs"], len(recompiles.messages)
            entry: dict[str, Any] = {"length": int(batch["input_ids"].shape[-1])}
            try:
                entry["seconds"] = step(flex, batch, device)
            except Exception as err:  # noqa: BLE001 - a compile failure is this part's finding
                traceback.print_exc()
                entry["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
            entry["graphs_compiled"] = counters["stats"]["unique_graphs"] - graphs
            entry["recompiles_logged"] = len(recompiles.messages) - logged
            per_length.append(entry)
            write_json(args.json, result)
            if "error" in entry:
                break
        result["flex"]["graphs_compiled"] = sum(e["graphs_compiled"] for e in per_length)
        result["flex"]["recompile_reasons"] = recompiles.messages[:10]
        if all("seconds" in e for e in per_length):
            try:
                result["flex_steady"] = steady(flex, batches[-1], device, args.repeats)
                result["flex_steady"]["vs_segments"] = result["segments_steady"]["seconds"] / result["flex_steady"]["seconds"]
            except Exception as err:  # noqa: BLE001
                traceback.print_exc()
                result["flex_steady"] = {"error": f"{type(err).__name__}: {str(err)[:300]}"}
    write_json(args.json, result)
    for key, value in result.items():
        print(f"{key}: {value}", flush=True)


if __name__ == "__main__":
    main()
