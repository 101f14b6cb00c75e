"""Attention for shared-prefix packed groups: three backends, the same log-probs.

A packed group is one sequence, the prompt then K responses (`advdistill.train.group_batches`);
a token sees the prompt and the earlier tokens of its own response. How that is computed:

- ``dense``: a (1, 1, L, L) boolean mask through the model's own attention (SDPA or eager). Every
  one of the L² scores is computed, the masked ones too: with P = R = 128 and K = 8 that is
  1,152² scores where the visible ones number about a fifth of that. Works everywhere.
- ``flex``: FlexAttention with a `BlockMask` built from the segments; its kernel skips the
  (128 × 128) blocks that are entirely masked. It runs through `torch.compile`. torch 2.13 has no
  FlexAttention backward on CPU ("FlexAttention does not support backward on CPU"), so on CPU it
  can only run forward passes; it is the GPU backend.
- ``segments``: variable-length attention by hand, two SDPA calls per layer whatever K is: the
  prompt attends to itself causally, then the responses, as a batch of rows, each attend to
  [prompt keys; their own keys] with a causal mask aligned to the bottom right (token j of a
  response sees the whole prompt and tokens ≤ j of its response). Only visible scores are
  computed (plus the padding of rows shorter than the longest), with autograd, no compile, on any
  device.

`auto` picks flex on CUDA and segments elsewhere (measured in bench/packing.py, bench/RESULTS.md
§3). Flex and segments need transformers to hand them the segment layout: the model's attention
implementation is set to `PACKED_ATTENTION`, a function registered with transformers'
`AttentionInterface` that dispatches on what the mask is (a `PackedSegments`, a `BlockMask`, or
anything else, which goes to SDPA, so separate sequences keep working on the same model).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from advdistill.train.group_batches import PROMPT_SEGMENT

PackedAttention = Literal["dense", "flex", "segments"]
PACKED_ATTENTION = "advdistill_packed"  # the name registered with transformers' AttentionInterface


def resolve_packed_attention(setting: str, device_type: str) -> PackedAttention:
    """`train.packed_attention` to a backend: `auto` = flex on CUDA (block-sparse kernels), segments
    elsewhere (flex cannot train on CPU)."""
    if setting == "auto":
        return "flex" if device_type == "cuda" and flex_available() else "segments"
    if setting not in ("dense", "flex", "segments"):
        raise ValueError(f"unknown packed attention backend {setting!r} (auto, dense, flex, segments)")
    return setting  # type: ignore[return-value]


def flex_available() -> bool:
    try:
        import torch.nn.attention.flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class PackedSegments:
    """A packed sequence's layout, ready for `segment_attention`: built once per forward (one host
    sync), shared by every layer.

    The prompt is [0, prompt_len). The R responses with tokens are gathered into an (R, width)
    grid (`grid_index`: sequence position of each cell, width = the longest response; a shorter
    response's cells past its end repeat its last position and are never seen, see
    `segment_attention`); `real_cells` lists the grid cells that hold real tokens, in sequence
    order, to put the outputs back."""

    prompt_len: int
    grid_index: torch.Tensor  # (R, width) long
    real_cells: torch.Tensor  # (L - prompt_len,) long, indices into the flattened grid
    visible: Any  # what SDPA gets as attn_mask for the (width, prompt_len + width) response block

    @classmethod
    def from_segment_ids(cls, segment_ids: torch.Tensor) -> "PackedSegments":
        """Responses are contiguous runs of one segment id after the prompt; an empty response
        has no tokens and no row (it attends to nothing)."""
        ids = segment_ids.reshape(-1).tolist()
        p = sum(1 for s in ids if s == PROMPT_SEGMENT)
        spans, start = [], p
        for position in range(p + 1, len(ids) + 1):
            if position == len(ids) or ids[position] != ids[start]:
                spans.append((start, position))
                start = position
        width = max((end - start for start, end in spans), default=0)
        grid = [[min(start + j, end - 1) for j in range(width)] for start, end in spans]
        real = [row * width + j for row, (start, end) in enumerate(spans) for j in range(end - start)]
        device = segment_ids.device
        return cls(p, torch.tensor(grid, dtype=torch.long, device=device).reshape(len(spans), width),
                   torch.tensor(real, dtype=torch.long, device=device), _bottom_right_causal(width, p + width, device))


def _bottom_right_causal(queries: int, keys: int, device: torch.device) -> Any:
    """Query j sees keys 0 .. keys - queries + j: the prompt, then its own response so far. On
    CUDA a `CausalBias` (SDPA picks flash or memory-efficient kernels, no mask in memory); on CPU
    a boolean mask built once per forward instead of once per layer and call."""
    if device.type == "cuda":
        from torch.nn.attention.bias import causal_lower_right  # CUDA only

        return causal_lower_right(queries, keys)
    return torch.ones(queries, keys, dtype=torch.bool, device=device).tril(keys - queries)


def dense_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """(1, 1, L, L) boolean, True = may attend: causal, and the key is in the prompt or in the
    query's own response."""
    seg = segment_ids.reshape(-1)
    causal = torch.ones(seg.numel(), seg.numel(), dtype=torch.bool, device=seg.device).tril()
    return (causal & ((seg[None, :] == PROMPT_SEGMENT) | (seg[None, :] == seg[:, None])))[None, None]


def flex_block_mask(segment_ids: torch.Tensor):
    """The same visibility as `dense_mask`, as a FlexAttention `BlockMask` (blocks of 128 × 128
    that are entirely masked are skipped by the kernel). On CUDA the mask is built by a compiled
    kernel, which never holds the L × L mask: at K = 8 × 2,048 tokens that would be 0.3 GB of
    booleans (and 2.7 GB of int64 segment lookups in eager mode)."""
    from torch.nn.attention.flex_attention import create_block_mask  # FlexAttention: only when that backend runs

    seg = segment_ids.reshape(-1)

    def visible(batch, head, q, kv):
        return (kv <= q) & ((seg[kv] == PROMPT_SEGMENT) | (seg[kv] == seg[q]))

    length = seg.numel()
    return create_block_mask(visible, None, None, length, length, device=seg.device, _compile=seg.is_cuda)


def _repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, H_kv, L, D) → (B, H_kv·groups, L, D), as transformers does for grouped-query heads."""
    if groups == 1:
        return x
    b, h, length, d = x.shape
    return x[:, :, None].expand(b, h, groups, length, d).reshape(b, h * groups, length, d)


def segment_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, segments: PackedSegments,
                      scaling: float | None) -> torch.Tensor:
    """Attention of a packed sequence by segments; (1, H, L, D) in, (1, L, H, D) out (the layout
    transformers' attention functions return). Two SDPA calls whatever K is, so the cost is the
    visible scores rather than the number of calls:

    1. the prompt on itself, causal;
    2. the responses as a batch of R rows, each row's queries against [prompt keys; the row's own
       keys], bottom-right causal. A row shorter than the widest repeats its last token in the
       cells past its end: those cells come after every real token of the row, so no real query
       sees them (their outputs are dropped, so no gradient flows through them either)."""
    groups = query.shape[1] // key.shape[1]
    sdpa_kwargs = {}
    if groups > 1 and query.device.type == "cpu":
        sdpa_kwargs["enable_gqa"] = True  # CPU kernels take grouped KV heads with a mask
    else:  # CUDA's flash/efficient kernels do not with a mask (as transformers' SDPA path): repeat
        key, value = _repeat_kv(key, groups), _repeat_kv(value, groups)
    p = segments.prompt_len
    # Copies, not slices: SDPA keeps its inputs for backward, and a slice would keep the whole
    # sequence's q, k and v alive beside the row copies below.
    prompt = F.scaled_dot_product_attention(query[:, :, :p].clone(), key[:, :, :p].clone(), value[:, :, :p].clone(),
                                            is_causal=True, scale=scaling, **sdpa_kwargs)
    rows, width = segments.grid_index.shape
    if rows == 0:
        return prompt.transpose(1, 2).contiguous()

    def as_rows(x: torch.Tensor) -> torch.Tensor:  # (1, h, L, D) -> (R, h, width, D)
        return x[0].index_select(1, segments.grid_index.reshape(-1)).unflatten(1, (rows, width)).transpose(0, 1)

    def with_prompt(x: torch.Tensor) -> torch.Tensor:  # (R, h, prompt + width, D)
        return torch.cat([x[:, :, :p].expand(rows, -1, -1, -1), as_rows(x)], dim=2)

    out = F.scaled_dot_product_attention(as_rows(query), with_prompt(key), with_prompt(value),
                                         attn_mask=segments.visible, scale=scaling, **sdpa_kwargs)
    responses = out.transpose(0, 1).flatten(1, 2).index_select(1, segments.real_cells)
    return torch.cat([prompt, responses[None]], dim=2).transpose(1, 2).contiguous()


def packed_attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: Any, scaling: float | None = None, dropout: float = 0.0,
                             **kwargs) -> tuple[torch.Tensor, None]:
    """The attention function registered as `PACKED_ATTENTION`: per-segment SDPA for a
    `PackedSegments`, FlexAttention for a `BlockMask`, transformers' SDPA for anything else."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward  # transformers: when a model attends

    if isinstance(attention_mask, PackedSegments):
        if dropout:
            raise ValueError("segment attention has no dropout (Qwen2's attention_dropout is 0)")
        return segment_attention(query, key, value, attention_mask, scaling), None
    if _is_block_mask(attention_mask):
        from transformers.integrations.flex_attention import flex_attention_forward  # FlexAttention: block masks

        return flex_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)


def _is_block_mask(mask: Any) -> bool:
    if not flex_available():
        return False
    from torch.nn.attention.flex_attention import BlockMask  # FlexAttention: only where it is available

    return isinstance(mask, BlockMask)


def use_packed_attention(causal_lm: nn.Module) -> None:
    """Route the model's attention through `packed_attention_forward` (registered once per
    process; every Ray Train worker registers its own). Masks for separate sequences are built as
    for SDPA."""
    from transformers import AttentionInterface  # transformers: only when a model is set up
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(PACKED_ATTENTION, packed_attention_forward)
    AttentionMaskInterface.register(PACKED_ATTENTION, sdpa_mask)
    causal_lm.config._attn_implementation = PACKED_ATTENTION


def packed_attention_mask(backend: PackedAttention, segment_ids: torch.Tensor, config: Any, dtype: torch.dtype) -> Any:
    """What the decoder's `attention_mask` argument gets for a packed sequence with this backend.

    Dense: the (1, 1, L, L) mask (additive floats of `dtype` for eager attention, which adds it).
    Flex and segments: a mapping from each layer type to the layout object, which transformers
    hands to the attention function untouched (a dict means "masks already prepared")."""
    if backend == "dense":
        mask = dense_mask(segment_ids)
        if config._attn_implementation == "eager":
            mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
        return mask
    if config._attn_implementation != PACKED_ATTENTION:
        raise ValueError(f"packed attention {backend!r} needs the model's attention set by use_packed_attention "
                         f"(it is {config._attn_implementation!r})")
    layout = flex_block_mask(segment_ids) if backend == "flex" else PackedSegments.from_segment_ids(segment_ids)
    return {layer_type: layout for layer_type in set(getattr(config, "layer_types", None) or ["full_attention"])}
