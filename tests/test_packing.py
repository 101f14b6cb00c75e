"""Shared-prefix packing: one sequence per group gives the same per-response log-probs (and loss
gradients) as N separate `prompt + response` sequences, with every attention backend of the packed
sequence (dense mask, per-segment SDPA, FlexAttention)."""

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from advdistill.config import LossConfig
from advdistill.loss import advdistill_loss
from advdistill.train.attention import PackedSegments, dense_mask, flex_available, resolve_packed_attention
from advdistill.train.collate import group_batch, group_tokens, packed_group_batch
from advdistill.train.group_batches import model_inputs
from advdistill.train.model import ResponseLogProbs

LOSS = LossConfig()


def tiny_lm(attn: str, packed_attention: str = "dense", dtype=torch.float64) -> ResponseLogProbs:
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True)
    config._attn_implementation = attn
    return ResponseLogProbs(Qwen2ForCausalLM(config).to(dtype), chunk_size=7, packed_attention=packed_attention)


GROUP = {
    "prompt_ids": [5, 6, 7, 8, 9, 10, 11],
    "response_ids": [[20, 21, 22, 1], [30, 1], [40, 41, 42, 43, 44, 45, 1], [50]],
    "advantages": [1.0, -0.5, 0.3, -0.8],
    "correct": [True, False, True, False],
}


def per_response(model, batch):
    logprobs, mask = model(**model_inputs(batch))
    return [logprobs[i][mask[i]] for i in range(mask.shape[0])], logprobs, mask


@pytest.mark.parametrize("attn,backend", [("sdpa", "dense"), ("eager", "dense"), ("sdpa", "segments")])
def test_packed_logprobs_equal_separate_sequences(attn, backend):
    model = tiny_lm(attn, backend)
    separate, _, _ = per_response(model, group_batch(GROUP, pad_id=0))
    packed, _, _ = per_response(model, packed_group_batch(GROUP, pad_id=0))
    for a, b, response in zip(separate, packed, GROUP["response_ids"]):
        assert a.shape == b.shape == (len(response),)
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-8)


@pytest.mark.slow  # torch.compile builds FlexAttention's C++ kernel: ~35 s on 2 cores
@pytest.mark.skipif(not flex_available(), reason="this torch has no FlexAttention")
def test_flex_attention_logprobs_equal_separate_sequences():
    """FlexAttention (compiled; float32, its CPU kernel's type). torch has no FlexAttention
    backward on CPU, so here only the forward pass is checked; the gradients are the same code
    as any attention's (transformers' flex integration) and run on GPU (bench/gpu_train.py)."""
    reference, flex = tiny_lm("sdpa", dtype=torch.float32), tiny_lm("sdpa", "flex", dtype=torch.float32)
    with torch.no_grad():
        separate, _, _ = per_response(reference, group_batch(GROUP, pad_id=0))
        packed, _, _ = per_response(flex, packed_group_batch(GROUP, pad_id=0))
    for a, b in zip(separate, packed):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["dense", "segments"])
def test_packed_loss_has_the_same_gradients(backend):
    model = tiny_lm("sdpa", backend)
    grads = []
    for make in (group_batch, packed_group_batch):
        model.zero_grad()
        batch = make(GROUP, pad_id=0)
        _, logprobs, mask = per_response(model, batch)
        advdistill_loss(logprobs, mask, batch["advantages"].double(), batch["correct"], tau=LOSS.tau, lam=LOSS.lam,
                        delta=LOSS.delta).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-6, atol=1e-8, msg=name)


def test_packing_reads_the_prompt_once():
    assert group_tokens(GROUP, packed=False) == 4 * 7 + 14
    assert group_tokens(GROUP, packed=True) == 7 + 14
    batch = packed_group_batch(GROUP, pad_id=0)
    assert batch["input_ids"].shape == (1, 21)
    assert batch["position_ids"][0].tolist()[7:11] == [7, 8, 9, 10]  # response 0 continues the prompt
    assert batch["position_ids"][0].tolist()[11:13] == [7, 8]  # and so does response 1
    assert batch["segment_ids"][0].tolist() == [-1] * 7 + [0] * 4 + [1] * 2 + [2] * 7 + [3]
    mask = dense_mask(batch["segment_ids"])[0, 0]
    assert mask[12, :7].all() and not mask[12, 7:11].any() and mask[12, 11:13].all() and not mask[12, 13:].any()
    segments = PackedSegments.from_segment_ids(batch["segment_ids"])
    # 4 responses, the widest 7 tokens; a shorter row repeats its last position past its end
    assert segments.prompt_len == 7 and segments.grid_index[1].tolist() == [11, 12, 12, 12, 12, 12, 12]
    assert segments.real_cells.tolist() == [0, 1, 2, 3, 7, 8, 14, 15, 16, 17, 18, 19, 20, 21]


@pytest.mark.parametrize("backend", ["dense", "segments"])
def test_a_response_without_tokens_packs_too(backend):
    """A response cut at the teacher's limit gets no end token, so it can be empty (every token
    a special one the decoder dropped); both layouts take it and agree."""
    group = {**GROUP, "response_ids": [[20, 21, 1], [], [30]], "advantages": [1.0, 0.0, -1.0], "correct": [True, False, False]}
    model = tiny_lm("sdpa", backend)
    separate, _, _ = per_response(model, group_batch(group, pad_id=0))
    packed, _, _ = per_response(model, packed_group_batch(group, pad_id=0))
    assert [len(r) for r in packed] == [3, 0, 1]
    for a, b in zip(separate, packed):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-8)


def test_auto_picks_flex_on_gpu_and_segments_on_cpu():
    assert resolve_packed_attention("auto", "cpu") == "segments"
    assert resolve_packed_attention("auto", "cuda") == ("flex" if flex_available() else "segments")
    assert resolve_packed_attention("dense", "cuda") == "dense"
    with pytest.raises(ValueError, match="unknown"):
        resolve_packed_attention("varlen", "cpu")
