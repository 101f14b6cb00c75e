"""The student as the loss needs it: response-token log-probabilities, sharded with FSDP2.

`ResponseLogProbs` wraps a transformers causal LM: it runs the decoder to the last hidden state
and projects only the response positions onto the vocabulary, a chunk at a time
(`advdistill.loss.token_logprobs`), so full-vocabulary logits are never materialised. It is the
FSDP root, so the embedding, final norm and (tied) output head are gathered by its hooks.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from advdistill.loss import IGNORE_INDEX, token_logprobs


class ResponseLogProbs(nn.Module):
    def __init__(self, causal_lm: nn.Module, chunk_size: int = 512):
        super().__init__()
        self.lm = causal_lm
        self.chunk_size = chunk_size

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        block_mask: torch.Tensor | None = None,
        gather_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probs of each response's tokens and their mask, (N, T) for either layout:

        - separate: N sequences `prompt + response_i` (N, T+1), labels aligned with input_ids;
        - shared-prefix packed (`block_mask` given): one sequence, labels (N, R) of response
          tokens and `gather_index` (N, R) the positions that predict them.

        One entry point, so FSDP's forward hooks gather the parameters for both."""
        if block_mask is not None:
            return self._packed(input_ids, position_ids, block_mask, gather_index, labels)
        hidden = self.lm.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state
        targets = labels[:, 1:]
        logprobs = token_logprobs(hidden[:, :-1], self.lm.lm_head.weight, targets, self.chunk_size)
        return logprobs, targets != IGNORE_INDEX

    def _packed(self, input_ids, position_ids, block_mask, gather_index, labels):
        mask = block_mask
        if self.lm.config._attn_implementation == "eager":  # eager attention adds a float mask
            dtype = self.lm.model.embed_tokens.weight.dtype
            mask = torch.zeros(block_mask.shape, dtype=dtype, device=block_mask.device).masked_fill(
                ~block_mask, torch.finfo(dtype).min)
        hidden = self.lm.model(
            input_ids=input_ids, attention_mask=mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state[0]
        logprobs = token_logprobs(hidden[gather_index], self.lm.lm_head.weight, labels, self.chunk_size)
        return logprobs, labels != IGNORE_INDEX


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
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device_type, (world_size,))
    kwargs: dict[str, Any] = {"mesh": mesh}
    if bf16:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for layer in decoder_layers(module.lm):
        fully_shard(layer, **kwargs)
    fully_shard(module, **kwargs)
    return module
