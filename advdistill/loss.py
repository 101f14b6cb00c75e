"""The AdvDistill and SFT losses, SPEC §6 (paper §4.2) — pure torch, no Ray.

For one group of N responses, I the incorrect ones, T_i the response tokens of response i
(prompt masked; the end-of-turn token included only where the teacher ended the response itself,
see `advdistill.train.collate`) and p_t = p_θ(y_t | x, y_<t):

    CE_i = −(1/T_i) Σ_t log p_t
    p̄_i  = (1/T_i) Σ_t p_t
    C_i  = −log(1 − min(p̄_i, 1 − δ))
    w    = softmax(A / τ)
    L    = Σ_i w_i · CE_i + (λ / N) · Σ_{i∈I} C_i

Token log-probs come from `token_logprobs`, which never holds full-vocabulary logits for more
than `chunk_size` tokens at once, in the forward or the backward pass: 8 × 2048 tokens × a
151,936-token vocabulary would be ~10 GB of fp32 logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE_INDEX = -100


def _accumulation_dtype(t: torch.Tensor) -> torch.dtype:
    """fp32 for fp32/bf16/fp16 activations (log-softmax in low precision loses the signal),
    fp64 for fp64 (tests compare against a float64 reference)."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


class _ChunkedTokenLogProbs(torch.autograd.Function):
    """log p(label) = (h · W)[label] − logsumexp(h · W), a chunk of tokens at a time.

    Backward recomputes each chunk's logits (d logp / d logits = onehot − softmax) instead of
    saving them, so memory is O(chunk × vocab) rather than O(tokens × vocab).

    Precision follows the forward: every matmul runs in the dtype of `hidden` and `weight` (bf16
    under FSDP's mixed precision on GPU: tensor cores, not plain fp32), the softmax and its
    gradient in fp32, and the output head's gradient is summed over chunks in fp32 (fp64 for fp64
    inputs, which keeps the CPU tests exact)."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk_size: int):
        n, acc = hidden.shape[0], _accumulation_dtype(hidden)
        logprobs = hidden.new_empty(n, dtype=acc)
        lse = hidden.new_empty(n, dtype=acc)
        for start in range(0, n, chunk_size):
            end = min(start + chunk_size, n)
            logits = (hidden[start:end] @ weight.t()).to(acc)
            chunk_lse = torch.logsumexp(logits, dim=-1)
            picked = logits.gather(1, labels[start:end, None]).squeeze(1)
            logprobs[start:end] = picked - chunk_lse
            lse[start:end] = chunk_lse
        ctx.save_for_backward(hidden, weight, labels, lse)
        ctx.chunk_size = chunk_size
        return logprobs

    @staticmethod
    def backward(ctx, grad_logprobs: torch.Tensor):
        hidden, weight, labels, lse = ctx.saved_tensors
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden = torch.zeros_like(hidden) if need_hidden else None
        acc = _accumulation_dtype(hidden)
        grad_weight = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_weight else None
        n, chunk_size = hidden.shape[0], ctx.chunk_size
        for start in range(0, n, chunk_size):
            end = min(start + chunk_size, n)
            h = hidden[start:end]
            g = grad_logprobs[start:end].to(acc)
            probs = torch.exp((h @ weight.t()).to(acc) - lse[start:end, None])
            grad_logits = probs.mul_(-g[:, None])
            grad_logits.scatter_add_(1, labels[start:end, None], g[:, None])
            grad_logits = grad_logits.to(weight.dtype)  # the matmuls' dtype, as in the forward (no copy in fp32)
            if need_hidden:
                grad_hidden[start:end] = (grad_logits @ weight).to(hidden.dtype)
            if need_weight:
                _add_chunk_grad_weight(grad_weight, grad_logits, h)
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None


def _add_chunk_grad_weight(grad_weight: torch.Tensor, grad_logits: torch.Tensor, hidden: torch.Tensor) -> None:
    """grad_weight += grad_logitsᵀ · hidden, the product in the inputs' dtype as in the forward.

    fp32 or fp64 inputs: one in-place addmm into the sum. bf16 inputs: the (V, H) product in bf16
    on tensor cores, then added into the fp32 sum, so rounding does not build up over chunks
    (`bench/gpu_slot.sh` part 2 times it against plain fp32 and TF32)."""
    if grad_logits.dtype == grad_weight.dtype:
        grad_weight.addmm_(grad_logits.t(), hidden.to(grad_weight.dtype))
    else:
        grad_weight.add_(grad_logits.t() @ hidden.to(grad_logits.dtype))


def token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    chunk_size: int,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Log-probabilities of `labels` under logits `hidden @ weight.T`, chunked over tokens.

    hidden: (..., H) final hidden states aligned with labels (position t predicts labels[t]);
    weight: (V, H) output embedding; labels: (...) token ids, `ignore_index` where masked.
    Returns float32 (float64 for float64 input) log-probs shaped like labels, 0 at ignored positions. Only the unmasked
    positions are projected onto the vocabulary at all."""
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    flat_labels = labels.reshape(-1)
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    keep = (flat_labels != ignore_index).nonzero(as_tuple=True)[0]
    out = torch.zeros(flat_labels.shape, dtype=_accumulation_dtype(hidden), device=hidden.device)
    if keep.numel():
        picked = _ChunkedTokenLogProbs.apply(flat_hidden.index_select(0, keep), weight, flat_labels[keep], chunk_size)
        out = out.index_put((keep,), picked)
    return out.view(labels.shape)


@dataclass(frozen=True)
class LossTerms:
    """The loss and the parts of it that training reports."""

    total: torch.Tensor
    weighted_ce: torch.Tensor
    contrastive: torch.Tensor
    weight_entropy: torch.Tensor  # entropy of w: low = the loss follows one response


def advdistill_loss_terms(
    logprobs: torch.Tensor,
    mask: torch.Tensor,
    advantages: torch.Tensor,
    correct: torch.Tensor,
    *,
    tau: float,
    lam: float,
    delta: float,
) -> LossTerms:
    """SPEC §6 for one group: `logprobs`/`mask` are (N, T); `advantages`/`correct` are (N,).
    τ, λ and δ are `train.loss` settings (their defaults live in the config)."""
    mask = mask.to(logprobs.dtype)
    n_tokens = mask.sum(dim=1).clamp_min(1.0)  # an empty response contributes nothing, not NaN
    ce = -(logprobs * mask).sum(dim=1) / n_tokens
    mean_prob = (logprobs.exp() * mask).sum(dim=1) / n_tokens
    unlikelihood = -torch.log1p(-mean_prob.clamp(max=1.0 - delta))
    weights = torch.softmax(advantages.to(logprobs.dtype).detach() / tau, dim=0)
    incorrect = (~correct.bool()).to(logprobs.dtype)
    n = logprobs.shape[0]
    weighted_ce = (weights * ce).sum()
    contrastive = (lam / n) * (incorrect * unlikelihood).sum()
    entropy = -(weights * weights.clamp_min(1e-30).log()).sum()
    return LossTerms(weighted_ce + contrastive, weighted_ce, contrastive, entropy.detach())


def advdistill_loss(
    logprobs: torch.Tensor,
    mask: torch.Tensor,
    advantages: torch.Tensor,
    correct: torch.Tensor,
    *,
    tau: float,
    lam: float,
    delta: float,
) -> torch.Tensor:
    """L = Σ_i w_i · CE_i + (λ / N) · Σ_{i∈I} C_i for one group (see the module docstring)."""
    return advdistill_loss_terms(logprobs, mask, advantages, correct, tau=tau, lam=lam, delta=delta).total


def sft_loss(logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """SFT baseline: mean token cross-entropy over the masked (response) tokens."""
    mask = mask.to(logprobs.dtype)
    return -(logprobs * mask).sum() / mask.sum().clamp_min(1.0)
