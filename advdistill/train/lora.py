"""LoRA students (`train.lora`, peft): adapters injected into the student before FSDP2 shards it,
so the loop, both losses, checkpoints and resume are unchanged; only the adapters require
gradients (the optimizer holds nothing else). The export merges them into the base weights,
giving the plain transformers folder evaluation and serving load (vLLM included), and keeps the
adapter itself beside it (`final/adapter/`, a few MB, loadable with `peft`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.nn as nn

ADAPTER = "adapter"


def peft_config(lora: Any) -> Any:
    try:
        from peft import LoraConfig as PeftLoraConfig  # peft: the optional `lora` extra, needed only with train.lora.r
    except ImportError as err:
        raise ImportError("train.lora.r > 0 needs peft: pip install 'advdistill[lora]'") from err
    return PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                          target_modules=list(lora.target_modules), bias="none", task_type="CAUSAL_LM")


def apply_lora(causal_lm: nn.Module, lora: Any) -> Any:
    """Inject adapters into `causal_lm` in place (its modules become peft's LoRA layers, their
    base weights frozen) and return the `PeftModel` around it; `causal_lm` itself stays the
    module the loop trains."""
    from peft import get_peft_model  # peft: the optional `lora` extra, needed only with train.lora.r

    return get_peft_model(causal_lm, peft_config(lora))


def merged_export(state: dict[str, Any], config: Any, lora: Any, folder: Path, student: str) -> nn.Module:
    """From a full state dict of the LoRA-injected model (names as in `causal_lm`): the merged
    plain model (returned, for `save_pretrained`), with the adapter saved under `folder/adapter`."""
    from peft import get_peft_model  # peft: the optional `lora` extra, needed only with train.lora.r
    from transformers import AutoModelForCausalLM  # transformers: only when exporting

    base = AutoModelForCausalLM.from_config(config)
    peft_model = get_peft_model(base, peft_config(lora))
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    missing, unexpected = peft_model.base_model.model.load_state_dict(state, strict=False)
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"LoRA export mismatch: missing {missing}, unexpected {unexpected}")
    peft_model.peft_config["default"].base_model_name_or_path = student
    peft_model.save_pretrained(folder / ADAPTER)
    return peft_model.merge_and_unload()
