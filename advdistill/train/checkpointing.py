"""Saving, restoring and exporting an FSDP2-sharded student — pure torch and transformers.

One implementation for the Ray Train loop (`advdistill.train.loop`) and for the GPU check
(`bench/gpu_slot.sh`), which runs where only torch and transformers are installed: nothing here
imports Ray, pydantic, pyarrow or the config (settings arrive as plain values).

- `save_checkpoint` / `restore_checkpoint`: the sharded model and optimizer through
  torch.distributed.checkpoint (each rank writes and reads its own shard), plus the scheduler,
  the step and the metrics so far (rank 0). A collective: every rank calls it.
- `export_hf`: the full state dict gathered to rank 0's CPU and written as a plain transformers
  folder (weights in the chosen dtype, tokenizer, generation config with the end-of-turn stops),
  loadable by transformers and vLLM. Also a collective.
"""

from __future__ import annotations

import contextlib
import copy
import json
from pathlib import Path
from typing import Any

import torch

from advdistill.end_of_turn import end_of_turn_token_ids

TRAINER_STATE = "trainer_state.json"
METRICS_FILE = "metrics.jsonl"
HF_EXPORT = "hf"
SHARDED = "dcp"

# `train.export_dtype` values; "training" = the dtype the step computes in (`training_dtype`).
EXPORT_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def training_dtype(bf16: bool, on_gpu: bool) -> torch.dtype:
    """The dtype the forward and backward run in: bf16 mixed precision on GPU (`train.bf16`),
    fp32 on CPU (CPU kernels have no fast bf16 path)."""
    return torch.bfloat16 if bf16 and on_gpu else torch.float32


def export_dtype(setting: str, bf16: bool, on_gpu: bool) -> torch.dtype:
    """The dtype `final/` is written in: `train.export_dtype`, "training" meaning the training
    dtype (bf16 on GPU: half the bytes every evaluation and Serve replica downloads, and no
    precision the student computed with is lost)."""
    if setting == "training":
        return training_dtype(bf16, on_gpu)
    if setting not in EXPORT_DTYPES:
        raise ValueError(f"unknown export dtype {setting!r}: training, {', '.join(EXPORT_DTYPES)}")
    return EXPORT_DTYPES[setting]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def save_checkpoint(folder: Path, model, optimizer, scheduler, global_step: int, history: list[dict],
                    rank: int) -> None:
    """Sharded model + optimizer (torch.distributed.checkpoint: each rank writes its own shard),
    plus the scheduler, the step and the metrics so far (rank 0)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(folder / SHARDED))
    if rank == 0:
        state = {"global_step": global_step, "scheduler": scheduler.state_dict()}
        (folder / TRAINER_STATE).write_text(json.dumps(state))
        (folder / METRICS_FILE).write_text("".join(json.dumps(m) + "\n" for m in history))


def restore_checkpoint(folder: Path, model, optimizer, scheduler) -> tuple[int, list[dict]]:
    """The inverse of `save_checkpoint`: loads the shards into `model` and `optimizer` in place
    and the scheduler's state; returns the global step and the metrics history."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, checkpoint_id=str(folder / SHARDED))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    trainer_state = json.loads((folder / TRAINER_STATE).read_text())
    scheduler.load_state_dict(trainer_state["scheduler"])
    history = [json.loads(line) for line in (folder / METRICS_FILE).read_text().splitlines() if line.strip()]
    return trainer_state["global_step"], history


def export_hf(folder: Path, model, lm, tokenizer_source: str, rank: int, dtype: torch.dtype = torch.float32,
              lora: Any = None) -> None:
    """A plain transformers folder (weights in `dtype`, tokenizer from `tokenizer_source`),
    loadable by transformers and vLLM; a LoRA student's adapters merged into it (`train.lora`).
    `model` is the sharded `ResponseLogProbs` (parameter names `lm.…`), `lm` the causal LM inside
    it (its config and generation config are written)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from transformers import AutoModelForCausalLM, AutoTokenizer

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank != 0:
        return
    state = {k.removeprefix("lm."): v for k, v in full.items()}
    if lora is not None and lora.r:
        from advdistill.train.lora import merged_export  # peft: only with train.lora.r

        export = merged_export(state, lm.config, lora, folder, tokenizer_source).to(dtype)
    else:
        export = _uninitialised(AutoModelForCausalLM, lm.config, dtype)
        missing, unexpected = export.load_state_dict(state, strict=False)  # copies, casting to `dtype`
        tied = {"lm_head.weight"} if lm.config.tie_word_embeddings else set()
        if set(missing) - tied or unexpected:
            raise RuntimeError(f"HF export mismatch: missing {missing}, unexpected {unexpected}")
        if tied:  # built without initialisation, the head is not tied yet: tie it (one tensor saved)
            export.get_output_embeddings().weight = export.get_input_embeddings().weight
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    export.generation_config = with_end_of_turn_stops(lm.generation_config, tokenizer)
    export.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def _uninitialised(model_class, config, dtype: torch.dtype):
    """`model_class.from_config` with its weights left uninitialised, since every one is loaded
    next: transformers' random initialisation of a 1.5B model takes 34 s on 2 CPU cores, this
    0.4 s. Initialised as usual where this transformers has no `no_init_weights`."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:
        no_init_weights = contextlib.nullcontext
    with no_init_weights():
        return model_class.from_config(config, dtype=dtype)


def with_end_of_turn_stops(generation_config, tokenizer):
    """A copy of `generation_config` whose eos_token_id also lists the chat template's
    end-of-turn token, which the student was trained to end its turns with: plain transformers
    `generate` and vLLM then stop there too, not only the project's engines."""
    config = copy.deepcopy(generation_config)
    eos = config.eos_token_id
    eos = list(eos) if isinstance(eos, (list, tuple)) else ([] if eos is None else [eos])
    config.eos_token_id = list(dict.fromkeys(eos + list(end_of_turn_token_ids(tokenizer))))
    return config
