"""The training-method registry: `train.method` selects which responses a group trains on and the
loss on them; collation and the loop only ask the method. A toy method registered here —
rejection-sampling fine-tuning, cross-entropy on every correct response — is one entry."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from advdistill.config import ConfigError, load_config, with_overrides
from advdistill.loss import sft_loss
from advdistill.scoring import score_group
from advdistill import methods
from advdistill.train.collate import tokenize_group
from advdistill.train.group_batches import model_inputs
from advdistill.train.loop import loss_terms, make_batch
from advdistill.methods import TrainingMethod, get_method, method_names, register_method, sft_terms
from advdistill.train.model import ResponseLogProbs

from conftest import TINY_STUDENT

RIGHT = "<think>\n3 + 2 = 5.\n</think>\n<answer>\n\\boxed{5}\n</answer>"
WRONG = "<think>\n3 + 2 = 6.\n</think>\n<answer>\n\\boxed{6}\n</answer>"


def group(responses):
    n = len(responses)
    scored = score_group(responses, [20] * n, ["stop"] * n, "5", "synthetic")
    return {"id": "g", "task": "synthetic", "question": "Tom has 3 apples. He buys 2 more. How many now?",
            "reference": "5", "choices": None, "meta": {}, "responses": responses, "token_lengths": [20] * n,
            "finish_reasons": ["stop"] * n, **scored}


@pytest.fixture()
def rft():
    method = register_method(TrainingMethod(
        "rft", select=lambda g: [i for i, ok in enumerate(g["correct"]) if ok], loss=sft_terms))
    yield method
    methods.METHODS.remove(method.name)


def test_a_registered_method_selects_and_trains(rft, tiny_cfg, tiny_tokenizer):
    cfg = with_overrides(tiny_cfg, {"train.method": "rft"})
    row = group([WRONG, RIGHT, WRONG, RIGHT])
    tokenised = tokenize_group(row, tiny_tokenizer, cfg)
    assert len(tokenised["response_ids"]) == 2 and tokenised["correct"] == [True, True]

    model = ResponseLogProbs(AutoModelForCausalLM.from_pretrained(TINY_STUDENT, dtype=torch.float32),
                             chunk_size=cfg.train.loss.chunk_size)
    batch = make_batch(tokenised, cfg, tiny_tokenizer.pad_token_id)
    terms = loss_terms(model, batch, cfg)
    assert list(terms) == ["loss"]
    logprobs, mask = model(**model_inputs(batch))
    torch.testing.assert_close(terms["loss"], sft_loss(logprobs, mask))


def test_the_built_in_methods(tiny_cfg, tiny_tokenizer):
    assert method_names() == ("advdistill", "sft")
    row = group([WRONG, RIGHT, WRONG, RIGHT])
    every = tokenize_group(row, tiny_tokenizer, tiny_cfg)
    best = tokenize_group(row, tiny_tokenizer, with_overrides(tiny_cfg, {"train.method": "sft"}))
    assert len(every["response_ids"]) == 4 and len(best["response_ids"]) == 1 and best["correct"] == [True]
    assert get_method("advdistill").terms == ("loss", "weighted_ce", "contrastive", "weight_entropy")
    assert get_method("sft").terms == ("loss",)  # no made-up zero terms


def test_unknown_methods_are_config_errors():
    with pytest.raises(ConfigError, match="unknown training method 'rl'"):
        load_config(None, ["train.method=rl"])
    with pytest.raises(ValueError, match="already registered"):
        register_method(get_method("sft"))
