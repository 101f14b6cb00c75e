"""Part 1 of bench/gpu_slot.sh: the training path of a Ray Train worker, on one NCCL rank, without
Ray (at most 3 minutes on an H100).

A Qwen2.5-1.5B-shaped student with random weights goes through what `advdistill.train.loop` does
with it, using the same functions: FSDP2 `fully_shard` with bf16 mixed precision (`shard_fsdp2`),
activation checkpointing, the AdvDistill loss on chunked log-probs (`ResponseLogProbs`), AdamW
with the loop's parameter groups and schedule, two micro-batches per step (gradient sync off, then
on), clipping. Then the checkpoint path: `save_checkpoint` (torch.distributed.checkpoint), a third
step, `restore_checkpoint`, and every parameter must equal its value at the save; `export_hf`
writes final/'s transformers folder (in the training dtype unless --export-dtype), which
transformers must load back with the same weights and the tokenizer of models/tiny-student.

Memory: the peak of the second step (`torch.cuda.max_memory_allocated`; AdamW's moments exist
from the first step on) against `bench/memory.py`'s estimate for this shape and one worker, and
the peak of a one-micro-batch step beside it: their difference is the accumulated fp32 gradients
docs/memory.md predicts (4 N bytes).

The layout is the paper configs' (separate sequences: `train.shared_prefix_packing` off), so no
FlexAttention compile can stop this part (part 3 measures flex). On CPU (`--tiny`, the dry run)
the same runs at a toy shape over gloo, in fp32.

    python bench/slot_train_path.py --json OUT/part1-train-path.json [--tiny] [--export-dtype bfloat16]
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from common import REPO, write_json  # also puts the repository on sys.path

import gpu_train  # noqa: E402 - after common: the student's shapes, the group maker, the loss settings
import memory  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config, Qwen2ForCausalLM  # noqa: E402
from transformers import get_cosine_schedule_with_warmup  # noqa: E402

from advdistill.loss import advdistill_loss  # noqa: E402
from advdistill.train.checkpointing import (dtype_name, export_dtype, export_hf, restore_checkpoint,  # noqa: E402
                                            save_checkpoint, training_dtype)
from advdistill.train.group_batches import group_batch, model_inputs  # noqa: E402
from advdistill.train.model import (ResponseLogProbs, enable_activation_checkpointing, param_groups,  # noqa: E402
                                    shard_fsdp2)

TOKENIZER = REPO / "models" / "tiny-student"
MAX_GRAD_NORM = 0.5  # train.max_grad_norm's default


def init_one_rank(backend: str) -> None:
    import torch.distributed as dist

    with socket.socket() as s:  # a free port for the rendezvous of this single rank
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    dist.init_process_group(backend, rank=0, world_size=1)


def scratch(need_bytes: int) -> Path:
    """A folder for the checkpoint and the export, never under $OUT (the results that travel back):
    /dev/shm where it has room (no disk in the timing), else the temp folder."""
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and shutil.disk_usage(shm).free > 1.3 * need_bytes else Path(tempfile.gettempdir())
    return Path(tempfile.mkdtemp(prefix="advdistill-slot-", dir=base))


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def local_values(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """This rank's shard of every parameter, copied to the CPU (one rank: the whole tensor)."""
    return {name: (p.to_local() if hasattr(p, "to_local") else p).detach().cpu().clone()
            for name, p in model.named_parameters()}


def train_step(model, optimizer, scheduler, batches: list[dict]) -> dict[str, float]:
    """One optimizer step over `batches` as the loop takes it: gradient sync only on the last
    micro-batch, the loss scaled to the mean over the step's groups, clipping, AdamW, schedule."""
    losses = []
    for i, batch in enumerate(batches):
        model.set_requires_gradient_sync(i == len(batches) - 1)
        logprobs, mask = model(**model_inputs(batch))
        loss = advdistill_loss(logprobs, mask, batch["advantages"], batch["correct"], **gpu_train.LOSS)
        (loss / len(batches)).backward()
        losses.append(loss.detach())
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
    return {"loss": float(torch.stack(losses).mean()), "grad_norm": float(norm)}


def timed_step(model, optimizer, scheduler, batches, device) -> dict[str, Any]:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    figures = train_step(model, optimizer, scheduler, batches)
    if device.type == "cuda":
        torch.cuda.synchronize()
    figures["seconds"] = round(time.perf_counter() - start, 3)
    figures["peak_bytes"] = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    figures["micro_batches"] = len(batches)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", required=True)
    parser.add_argument("--tiny", action="store_true", help="toy shape on CPU over gloo (the dry run)")
    parser.add_argument("--export-dtype", default="training", help="train.export_dtype: training, bfloat16, float32")
    parser.add_argument("--chunk-size", type=int, default=1024, help="train.loss.chunk_size")
    parser.add_argument("--k", type=int, default=8)
    args = parser.parse_args()
    import torch.distributed as dist

    on_gpu = torch.cuda.is_available() and not args.tiny
    device = torch.device("cuda", 0) if on_gpu else torch.device("cpu")
    if on_gpu:
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(1)
    shape, (prompt, low, high) = (gpu_train.TINY, (16, 8, 32)) if args.tiny else (gpu_train.QWEN25_15B, (256, 512, 2048))
    result: dict[str, Any] = {"device": torch.cuda.get_device_name(device) if on_gpu else "cpu",
                              "backend": "nccl" if on_gpu else "gloo", "world_size": 1,
                              "layout": "separate sequences (paper configs)", "activation_checkpointing": True,
                              "compute_dtype": dtype_name(training_dtype(True, on_gpu)), "checks": {}}
    checks = result["checks"]
    init_one_rank(result["backend"])
    try:
        torch.manual_seed(0)
        config = Qwen2Config(**shape)
        with torch.device(device):  # fp32 master weights, initialised where they train
            lm = Qwen2ForCausalLM(config)
        lm.config.use_cache = False
        enable_activation_checkpointing(lm)
        model = ResponseLogProbs(lm, chunk_size=args.chunk_size)
        model = shard_fsdp2(model, device.type, 1, bf16=on_gpu)
        model.train()
        optimizer = torch.optim.AdamW(param_groups(model, 0.01), lr=1e-5)
        scheduler = get_cosine_schedule_with_warmup(optimizer, 0, 10)  # no warm-up: every step moves the weights
        groups = [gpu_train.make_group(args.k, prompt, low, high, config.vocab_size, seed) for seed in (1, 2)]
        batches = [{k: v.to(device) for k, v in group_batch(g, pad_id=0).items()} for g in groups]
        params = sum(p.numel() for p in model.parameters())
        tokens = max(b["input_ids"].numel() for b in batches)  # the larger micro-batch, padded (what runs)
        result.update(parameters=params, tokens_per_micro_batch=[b["input_ids"].numel() for b in batches])

        steps = [timed_step(model, optimizer, scheduler, batches, device) for _ in range(2)]  # 1st: AdamW's state appears
        result["steps"] = steps
        checks["losses_and_norms_finite"] = all(math.isfinite(s["loss"]) and math.isfinite(s["grad_norm"]) for s in steps)
        arch = memory.Arch("this student", hidden=config.hidden_size, layers=config.num_hidden_layers,
                           heads=config.num_attention_heads, kv_heads=config.num_key_value_heads,
                           intermediate=config.intermediate_size, vocab=config.vocab_size)
        estimate = memory.estimate(arch, tokens, checkpointing=True, workers=1, chunk=args.chunk_size, micro_batches=2)
        result["memory_estimate_bytes"] = {k: int(v) for k, v in estimate.items()}
        write_json(args.json, result)

        folder = scratch(need_bytes=16 * params + 4 * params)
        result["scratch"] = str(folder.parent)
        try:
            start = time.perf_counter()
            save_checkpoint(folder, model, optimizer, scheduler, global_step=2, history=steps, rank=0)
            saved = local_values(model)
            result["checkpoint"] = {"save_seconds": round(time.perf_counter() - start, 2), "bytes": folder_bytes(folder)}
            # A step of the larger group alone: it moves the weights away from the checkpoint, and
            # its peak, beside the two-micro-batch step's, measures the accumulated gradients.
            bigger = max(batches, key=lambda b: b["input_ids"].numel())
            one = timed_step(model, optimizer, scheduler, [bigger], device)
            result["one_micro_batch_step"] = one
            if on_gpu:
                measured = steps[1]["peak_bytes"]
                result["memory"] = {
                    "peak_two_micro_batches": measured, "estimate_peak": int(estimate["peak"]),
                    "measured_over_estimate": round(measured / estimate["peak"], 3),
                    "peak_one_micro_batch": one["peak_bytes"],
                    "accumulation_measured": measured - one["peak_bytes"],
                    "accumulation_predicted": int(estimate["accumulation"]),
                }
            moved = local_values(model)
            checks["third_step_moved_the_weights"] = any(not torch.equal(moved[n], saved[n]) for n in saved)
            start = time.perf_counter()
            step, history = restore_checkpoint(folder, model, optimizer, scheduler)
            restored = local_values(model)
            result["checkpoint"]["restore_seconds"] = round(time.perf_counter() - start, 2)
            checks["restored_parameters_equal_the_saved"] = all(torch.equal(restored[n], saved[n]) for n in saved)
            checks["restored_step_and_history"] = step == 2 and len(history) == 2 and scheduler.last_epoch == 2
            write_json(args.json, result)

            dtype = export_dtype(args.export_dtype, bf16=True, on_gpu=on_gpu)
            start = time.perf_counter()
            export_hf(folder / "hf", model, lm, str(TOKENIZER), rank=0, dtype=dtype)
            result["export"] = {"dtype": dtype_name(dtype), "seconds": round(time.perf_counter() - start, 2),
                                "bytes": folder_bytes(folder / "hf")}
            start = time.perf_counter()
            reloaded = AutoModelForCausalLM.from_pretrained(folder / "hf", dtype=dtype)
            tokenizer = AutoTokenizer.from_pretrained(folder / "hf")
            result["export"]["reload_seconds"] = round(time.perf_counter() - start, 2)
            state = reloaded.state_dict()
            checks["export_reloads_with_the_trained_weights"] = all(
                torch.equal(state[name.removeprefix("lm.")], value.to(dtype)) for name, value in saved.items())
            checks["export_dtype"] = reloaded.dtype == dtype
            checks["export_has_the_tokenizer"] = tokenizer.get_vocab() == AutoTokenizer.from_pretrained(TOKENIZER).get_vocab()
            result["export"]["eos_token_id"] = reloaded.generation_config.eos_token_id
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        result["ok"] = all(checks.values())
        write_json(args.json, result)
        for key in ("steps", "one_micro_batch_step", "memory", "checkpoint", "export", "checks", "ok"):
            print(f"{key}: {result.get(key)}", flush=True)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
