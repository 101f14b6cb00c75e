"""The student as the loss needs it: response-token log-probabilities, sharded with FSDP2.

`ResponseLogProbs` wraps a transformers causal LM: it runs the decoder to the last hidden state
and projects only the response positions onto the vocabulary, a chunk at a time
(`advdistill.loss.token_logprobs`), so full-vocabulary logits are never materialised. It is the
FSDP root, so the embedding, final norm and (tied) output head are gathered by its hooks.

Packed groups go through one of three attention backends (`advdistill.train.attention`: dense
mask, FlexAttention, per-segment SDPA), all giving the same log-probs. Activation checkpointing
recomputes each decoder layer in backward instead of keeping its activations
(`enable_activation_checkpointing`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from advdistill.loss import IGNORE_INDEX, token_logprobs
from advdistill.train.attention import PackedAttention, packed_attention_mask, use_packed_attention


class ResponseLogProbs(nn.Module):
    def __init__(self, causal_lm: nn.Module, chunk_size: int, packed_attention: PackedAttention = "dense"):
        """`chunk_size`: tokens projected onto the vocabulary at once (`train.loss.chunk_size`).
        `packed_attention`: how packed groups attend (see `advdistill.train.attention`); flex and
        segments route the model's attention through the project's dispatcher, which sends
        separate sequences to SDPA as before."""
        super().__init__()
        self.lm = causal_lm
        self.chunk_size = chunk_size
        self.packed_attention = packed_attention
        if packed_attention != "dense":
            use_packed_attention(causal_lm)

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
        gather_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probs of each response's tokens and their mask, (N, T) for either layout:

        - separate: N sequences `prompt + response_i` (N, T+1), labels aligned with input_ids;
        - shared-prefix packed (`segment_ids` given): one sequence, labels (N, R) of response
          tokens and `gather_index` (N, R) the positions that predict them.

        One entry point, so FSDP's forward hooks gather the parameters for both."""
        hidden, targets = self.response_hidden(input_ids, labels, attention_mask, position_ids, segment_ids,
                                               gather_index)
        return token_logprobs(hidden, self.lm.lm_head.weight, targets, self.chunk_size), targets != IGNORE_INDEX

    def response_hidden(self, input_ids, labels, attention_mask=None, position_ids=None, segment_ids=None,
                        gather_index=None) -> tuple[torch.Tensor, torch.Tensor]:
        """The final hidden states that predict each target token, (N, T, H), and the targets
        (N, T). `forward` projects them a chunk at a time; bench/gpu_train.py also projects them
        all at once, for the full-logits comparison. (Outside FSDP only: FSDP's hooks wrap
        `forward`.)"""
        if segment_ids is not None:
            mask = packed_attention_mask(self.packed_attention, segment_ids, self.lm.config,
                                         dtype=self.lm.model.embed_tokens.weight.dtype)
            hidden = self.lm.model(
                input_ids=input_ids, attention_mask=mask, position_ids=position_ids, use_cache=False
            ).last_hidden_state[0]
            return hidden[gather_index], labels
        hidden = self.lm.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state
        return hidden[:, :-1], labels[:, 1:]


def enable_activation_checkpointing(causal_lm: nn.Module) -> None:
    """Recompute each decoder layer's forward in backward instead of storing its activations:
    only the layer inputs (L × hidden per layer) stay alive between forward and backward.

    transformers' own per-layer checkpointing, non-reentrant: it wraps each decoder layer's
    `__call__`, so FSDP2's hooks on that layer run inside the checkpointed region and unshard the
    layer again for the recompute; parameter names do not change (checkpoints and the HF export
    are the same with it on or off), and our `ResponseLogProbs` forward reaches the layers through
    `lm.model` as usual. Active only in training mode (`model.train()`), as transformers has it."""
    causal_lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def decoder_layers(causal_lm: nn.Module) -> list[nn.Module]:
    """The transformer blocks of a transformers causal LM (Qwen2, Llama, Mistral…)."""
    layers = getattr(getattr(causal_lm, "model", None), "layers", None)
    if layers is None:
        raise ValueError(f"cannot find decoder layers in {type(causal_lm).__name__} (expected .model.layers)")
    return list(layers)


def shard_fsdp2(module: ResponseLogProbs, device_type: str, world_size: int, bf16: bool) -> ResponseLogProbs:
    """FSDP2: `fully_shard` each decoder layer, then the root (SPEC §6 / issue: gloo on CPU,
    NCCL on GPU — the process group comes from Ray Train). bf16 compute with fp32 master weights
    and fp32 gradient reduction on GPU."""
    from torch.distributed.device_mesh import init_device_mesh  # FSDP2: only when sharding
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device_type, (world_size,))
    kwargs: dict[str, Any] = {"mesh": mesh}
    if bf16:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for layer in decoder_layers(module.lm):
        fully_shard(layer, **kwargs)
    fully_shard(module, **kwargs)
    return module


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW's parameter groups: weight decay on matrices only, not on biases and norm weights
    (as transformers' Trainer); frozen parameters (a LoRA student's base) left out."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "norm" in name else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
