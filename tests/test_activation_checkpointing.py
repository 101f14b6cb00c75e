"""Activation checkpointing (`train.activation_checkpointing`): the same gradients with it on or
off, in both layouts, with and without FSDP2, and the decoder layers really are recomputed."""

import socket

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from advdistill.config import LossConfig
from advdistill.loss import advdistill_loss
from advdistill.train.collate import group_batch, packed_group_batch
from advdistill.train.group_batches import model_inputs
from advdistill.train.model import ResponseLogProbs, enable_activation_checkpointing

GROUP = {
    "prompt_ids": [5, 6, 7, 8, 9, 10, 11],
    "response_ids": [[20, 21, 22, 1], [30, 1], [40, 41, 42, 43, 44, 45, 1], [50]],
    "advantages": [1.0, -0.5, 0.3, -0.8],
    "correct": [True, False, True, False],
}
LAYOUTS = {"separate": (group_batch, "dense"), "packed-dense": (packed_group_batch, "dense"),
           "packed-segments": (packed_group_batch, "segments")}


def tiny_model(checkpointing: bool, packed_attention: str) -> ResponseLogProbs:
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True)
    lm = Qwen2ForCausalLM(config).double()
    if checkpointing:
        enable_activation_checkpointing(lm)
    return ResponseLogProbs(lm, chunk_size=5, packed_attention=packed_attention).train()


def mlp_calls(model: ResponseLogProbs) -> list[int]:
    """Counts the forward runs of the first layer's MLP (twice per step when recomputed; a pre-hook,
    since the recompute stops early, once the saved tensors it needs are back)."""
    calls = [0]
    model.lm.model.layers[0].mlp.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def step_gradients(model, make_batch) -> dict[str, torch.Tensor]:
    batch = make_batch(GROUP, pad_id=0)
    logprobs, mask = model(**model_inputs(batch))
    loss = LossConfig()
    advdistill_loss(logprobs, mask, batch["advantages"].double(), batch["correct"], tau=loss.tau, lam=loss.lam,
                    delta=loss.delta).backward()
    return {name: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).clone()
            for name, p in model.named_parameters()}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_checkpointing_gives_the_same_gradients_and_recomputes(layout):
    make_batch, backend = LAYOUTS[layout]
    plain, checkpointed = tiny_model(False, backend), tiny_model(True, backend)
    plain_calls, checkpointed_calls = mlp_calls(plain), mlp_calls(checkpointed)
    expected, got = step_gradients(plain, make_batch), step_gradients(checkpointed, make_batch)
    assert (plain_calls[0], checkpointed_calls[0]) == (1, 2)  # recomputed in backward
    assert expected.keys() == got.keys()  # parameter names unchanged (checkpoints, HF export)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-10, atol=1e-12, msg=name)


@pytest.fixture
def single_process_group():
    """A one-rank gloo process group, so FSDP2 runs in this process (no Ray)."""
    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("layout", ["separate", "packed-segments"])
def test_checkpointing_composes_with_fsdp2(layout, single_process_group):
    """Checkpointing enabled before `fully_shard`, as the training loop does: FSDP2's unshard
    hooks run again inside the recompute; the gradients equal plain training's."""
    from advdistill.train.model import shard_fsdp2

    make_batch, backend = LAYOUTS[layout]
    expected = step_gradients(tiny_model(False, backend), make_batch)
    sharded = shard_fsdp2(tiny_model(True, backend), "cpu", world_size=1, bf16=False)
    calls = mlp_calls(sharded)
    got = step_gradients(sharded, make_batch)
    assert calls[0] == 2
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-10, atol=1e-12, msg=name)
