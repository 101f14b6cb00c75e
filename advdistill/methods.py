"""Training methods (SPEC §5–6): what `train.method` selects — the responses of a curated group the
student trains on, and the loss on them.

    advdistill   every response (the first K' with train.responses_per_group); the AdvDistill
                 loss: advantage-weighted cross-entropy + a contrastive penalty on incorrect ones
    sft          the best response (highest advantage; ties: shorter, then first); its mean
                 token cross-entropy

Collation asks the method which responses to keep and the training loop asks it for the loss, so
neither branches on the method; adding a method is one `register_method(...)` plus its tests, in
the spirit of verl's `register_policy_loss`. A core module (numpy and the registry only): the
config validates `train.method` and `train.method_lr` against it, and the losses themselves — the
pure torch functions of `advdistill.loss` — are imported only when a loss is computed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Callable, Mapping, Sequence

import numpy as np
from pydantic import AfterValidator

from advdistill.registry import Registry

if TYPE_CHECKING:
    import torch

    from advdistill.config import LossConfig

# A group's candidate responses as lists, one entry per response: "advantages", "correct",
# "token_lengths", "finish_reasons" -> the indices of those to train on.
Selection = Callable[[Mapping[str, Sequence[Any]]], list[int]]
# (log-probs (N, T), mask (N, T), the group's tensors, train.loss) -> the terms the method reports,
# "loss" (the one minimised) first.
Loss = Callable[["torch.Tensor", "torch.Tensor", Mapping[str, "torch.Tensor"], "LossConfig"], dict[str, "torch.Tensor"]]


@dataclass(frozen=True)
class TrainingMethod:
    name: str
    select: Selection
    loss: Loss
    terms: tuple[str, ...] = ("loss",)  # the keys `loss` returns, in order: what metrics.jsonl reports


METHODS: Registry[TrainingMethod] = Registry("training method")
get_method = METHODS.get
method_names = METHODS.names


def register_method(method: TrainingMethod) -> TrainingMethod:
    if method.terms[0] != "loss":
        raise ValueError(f"training method {method.name!r}: its first term must be 'loss'")
    return METHODS.register(method.name, method)


def _known_method(name: str) -> str:
    get_method(name)
    return name


# A method name as configs give it: validated against the registry when it is read.
MethodName = Annotated[str, AfterValidator(_known_method)]


# ---------------------------------------------------------------- the built-in methods


def best_response(advantages: Sequence[float], token_lengths: Sequence[int]) -> int:
    """The SFT target: highest advantage; ties go to the shorter response, then the lower index."""
    adv = np.asarray(advantages, dtype=np.float64)
    lengths = np.asarray(token_lengths)
    # lexsort sorts by the last key first: -advantage, then length, then index.
    order = np.lexsort((np.arange(adv.size), lengths, -adv))
    return int(order[0])


def every_response(group: Mapping[str, Sequence[Any]]) -> list[int]:
    return list(range(len(group["advantages"])))


def best_only(group: Mapping[str, Sequence[Any]]) -> list[int]:
    return [best_response(group["advantages"], group["token_lengths"])]


def advdistill_terms(logprobs, mask, batch, cfg) -> dict[str, "torch.Tensor"]:
    from advdistill.loss import advdistill_loss_terms  # torch: loaded when a loss is computed, not by the config

    t = advdistill_loss_terms(logprobs, mask, batch["advantages"], batch["correct"], tau=cfg.tau, lam=cfg.lam,
                              delta=cfg.delta)
    return {"loss": t.total, "weighted_ce": t.weighted_ce, "contrastive": t.contrastive,
            "weight_entropy": t.weight_entropy}


def sft_terms(logprobs, mask, batch, cfg) -> dict[str, "torch.Tensor"]:
    from advdistill.loss import sft_loss  # torch: loaded when a loss is computed, not by the config

    return {"loss": sft_loss(logprobs, mask)}


register_method(TrainingMethod("advdistill", every_response, advdistill_terms,
                               terms=("loss", "weighted_ce", "contrastive", "weight_entropy")))
register_method(TrainingMethod("sft", best_only, sft_terms))
