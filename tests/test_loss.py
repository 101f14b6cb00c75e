"""SPEC §6: the AdvDistill loss and chunked token log-probs against naive implementations."""

import math

import pytest
import torch

from advdistill.loss import IGNORE_INDEX, advdistill_loss, advdistill_loss_terms, sft_loss, token_logprobs

# The SPEC's values, which the hand-worked cases below assume.
SPEC = {"tau": 0.5, "lam": 0.5, "delta": 1e-5}


def naive_logprobs(hidden, weight, labels):
    logits = hidden @ weight.t()
    lp = torch.log_softmax(logits, dim=-1)
    safe = labels.clamp_min(0)
    picked = lp.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return torch.where(labels == IGNORE_INDEX, torch.zeros_like(picked), picked)


def naive_advdistill(logprobs, mask, advantages, correct, tau=0.5, lam=0.5, delta=1e-5):
    """The SPEC formula term by term, one response at a time."""
    n = logprobs.shape[0]
    weights = torch.softmax(advantages / tau, dim=0)
    total = logprobs.new_zeros(())
    for i in range(n):
        toks = logprobs[i][mask[i].bool()]
        ce = -toks.mean()
        total = total + weights[i] * ce
        if not correct[i]:
            p_bar = toks.exp().mean()
            total = total + (lam / n) * -torch.log(1 - torch.clamp(p_bar, max=1 - delta))
    return total


def random_case(n=4, t=7, h=6, v=11, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, t, h, generator=g, dtype=dtype, requires_grad=True)
    weight = torch.randn(v, h, generator=g, dtype=dtype, requires_grad=True)
    labels = torch.randint(0, v, (n, t), generator=g)
    labels[:, :2] = IGNORE_INDEX  # prompt tokens
    labels[1, -3:] = IGNORE_INDEX  # a shorter response (padding)
    return hidden, weight, labels


@pytest.mark.parametrize("chunk_size", [1, 3, 5, 1000])
def test_token_logprobs_equals_log_softmax_values_and_gradients(chunk_size):
    hidden, weight, labels = random_case()
    upstream = torch.randn(labels.shape, dtype=torch.float64)
    ours = token_logprobs(hidden, weight, labels, chunk_size=chunk_size)
    (ours.double() * upstream).sum().backward()
    g_hidden, g_weight = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    ref = naive_logprobs(hidden, weight, labels)
    (ref * upstream).sum().backward()
    torch.testing.assert_close(ours.double(), ref.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_hidden, hidden.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_weight, weight.grad, rtol=1e-5, atol=1e-6)
    assert torch.all(ours[labels == IGNORE_INDEX] == 0)


def test_token_logprobs_gradcheck():
    hidden, weight, labels = random_case(n=2, t=4, h=3, v=5)
    assert torch.autograd.gradcheck(lambda h, w: token_logprobs(h, w, labels, chunk_size=3), (hidden, weight))


class MatmulDtypes(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the input dtypes of every matrix product run while active."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm):
            self.seen.append((func.overloadpacket.__name__, {a.dtype for a in args if isinstance(a, torch.Tensor)}))
        return func(*args, **(kwargs or {}))


def test_bf16_backward_multiplies_in_bf16_like_the_forward_and_matches_fp32_gradients():
    """On GPU, FSDP's mixed precision hands the head bf16 hidden states and weights: the backward's
    products run in bf16 like the forward's (tensor cores, not plain fp32), the head's gradient is
    summed over chunks in fp32, and the gradients equal an fp32 reference to bf16 precision."""
    hidden, weight, labels = random_case(n=4, t=40, h=32, v=300, dtype=torch.float32)
    upstream = torch.randn(labels.shape)
    reference = naive_logprobs(hidden, weight, labels)
    (reference * upstream).sum().backward()
    low_hidden = hidden.detach().bfloat16().requires_grad_()
    low_weight = weight.detach().bfloat16().requires_grad_()
    ours = token_logprobs(low_hidden, low_weight, labels, chunk_size=16)
    with MatmulDtypes() as products:
        (ours * upstream).sum().backward()
    # per chunk: the recomputed logits, the gradient of the hidden states, that of the head
    assert len(products.seen) == 3 * math.ceil(int((labels != IGNORE_INDEX).sum()) / 16)
    assert all(dtypes == {torch.bfloat16} for _, dtypes in products.seen), products.seen
    assert low_weight.grad.dtype == torch.bfloat16
    scale = lambda g: g.abs().max().item()  # noqa: E731 - bf16 keeps 8 bits: errors relative to the largest entry
    torch.testing.assert_close(low_hidden.grad.float(), hidden.grad, rtol=0, atol=2e-2 * scale(hidden.grad))
    torch.testing.assert_close(low_weight.grad.float(), weight.grad, rtol=0, atol=2e-2 * scale(weight.grad))


def test_token_logprobs_rejects_bad_chunk_size():
    hidden, weight, labels = random_case()
    with pytest.raises(ValueError):
        token_logprobs(hidden, weight, labels, chunk_size=0)


@pytest.mark.parametrize("seed", range(3))
def test_advdistill_loss_equals_naive_float64_values_and_gradients(seed):
    hidden, weight, labels = random_case(seed=seed)
    mask = labels != IGNORE_INDEX
    advantages = torch.tensor([1.2, -0.3, 0.4, -1.3], dtype=torch.float64)
    correct = torch.tensor([True, False, True, False])
    ours = advdistill_loss(token_logprobs(hidden, weight, labels, chunk_size=4).double(), mask, advantages, correct, **SPEC)
    ours.backward()
    g_ours = (hidden.grad.clone(), weight.grad.clone())
    hidden.grad = weight.grad = None
    ref = naive_advdistill(naive_logprobs(hidden, weight, labels), mask, advantages, correct)
    ref.backward()
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(g_ours[0], hidden.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(g_ours[1], weight.grad, rtol=1e-5, atol=1e-7)


def test_three_response_toy_group_by_hand():
    # Response token probabilities (masked tokens marked 0 in the mask):
    #   r0 (correct):   p = [0.5, 0.25]        CE0 = -(ln .5 + ln .25)/2 = 1.5 ln 2
    #   r1 (incorrect): p = [0.5]              CE1 = ln 2;  p̄1 = 0.5; C1 = -ln(0.5) = ln 2
    #   r2 (incorrect): p = [0.25, 0.25, 0.5]  CE2 = -(2 ln .25 + ln .5)/3 = 5/3 ln 2
    #                                          p̄2 = 1/3; C2 = -ln(2/3)
    # advantages [1, 0, -1], tau 0.5: w = softmax([2, 0, -2]); lam 0.5, N 3.
    lp = torch.log(torch.tensor([[0.5, 0.25, 1.0], [0.5, 1.0, 1.0], [0.25, 0.25, 0.5]], dtype=torch.float64))
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1]])
    adv = torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64)
    correct = torch.tensor([True, False, False])
    ln2 = math.log(2)
    z = math.exp(2) + 1 + math.exp(-2)
    w = [math.exp(2) / z, 1 / z, math.exp(-2) / z]
    expected_ce = w[0] * 1.5 * ln2 + w[1] * ln2 + w[2] * (5 / 3) * ln2
    expected_contrastive = 0.5 / 3 * (ln2 - math.log(2 / 3))
    terms = advdistill_loss_terms(lp, mask, adv, correct, **SPEC)
    assert terms.weighted_ce.item() == pytest.approx(expected_ce, rel=1e-12)
    assert terms.contrastive.item() == pytest.approx(expected_contrastive, rel=1e-12)
    assert terms.total.item() == pytest.approx(expected_ce + expected_contrastive, rel=1e-12)
    assert terms.weight_entropy.item() == pytest.approx(-sum(x * math.log(x) for x in w), rel=1e-12)


def test_contrastive_term_is_clamped_near_certainty():
    lp = torch.zeros(1, 3, dtype=torch.float64)  # p = 1 everywhere: p̄ = 1 is clamped to 1 - δ
    loss = advdistill_loss(lp, torch.ones(1, 3), torch.zeros(1, dtype=torch.float64), torch.tensor([False]), **SPEC)
    # CE = 0, C = -ln(1e-5), lam / N = 0.5
    assert loss.item() == pytest.approx(0.5 * -math.log(1e-5))
    assert torch.isfinite(loss)


def test_all_correct_group_has_no_contrastive_term_and_empty_responses_are_safe():
    lp = torch.log(torch.full((2, 2), 0.5, dtype=torch.float64))
    mask = torch.tensor([[1, 1], [0, 0]])
    terms = advdistill_loss_terms(lp, mask, torch.zeros(2, dtype=torch.float64), torch.tensor([True, True]), **SPEC)
    assert terms.contrastive.item() == 0
    assert terms.total.item() == pytest.approx(0.5 * math.log(2))  # w = [.5, .5]; CE of the empty one = 0


def test_sft_loss_is_mean_token_cross_entropy():
    lp = torch.log(torch.tensor([[0.5, 0.25, 0.9]], dtype=torch.float64))
    mask = torch.tensor([[1, 1, 0]])
    assert sft_loss(lp, mask).item() == pytest.approx(1.5 * math.log(2))
