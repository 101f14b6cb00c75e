"""Teacher and student with different tokenizers (text-level distillation, which logit
distillation cannot do): the tiny teacher (its 1,024-token vocabulary) is distilled into a student
with a vocabulary of its own, through curation, training and evaluation. The rewards' lengths are
the teacher's tokens (SPEC §4, written at curation), the loss's the student's (collation)."""

from __future__ import annotations

import importlib.util
import sys

import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

from advdistill.config import DatasetConfig, with_overrides
from advdistill.data.synthetic import make_split
from advdistill.prompts import template_response
from advdistill.train.collate import student_end_of_turn_id, tokenize_group

from conftest import REPO, TINY_TEACHER

pytestmark = pytest.mark.slow


def _tool(name: str):
    """A module of tools/ (scripts, not a package), loaded from its file."""
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


train_tokenizer = _tool("build_tiny_models").train_tokenizer


def own_student(folder) -> AutoTokenizer:
    """A random Qwen2 student with a 320-token byte-level BPE trained here on the task's text."""
    records = make_split("train", 400, seed=11)
    corpus = [r["question"] for r in records] + [template_response("reasoning", r["reference"]) for r in records]
    tokenizer = train_tokenizer(corpus, 320, folder)
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
                         tie_word_embeddings=True, bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def test_a_student_with_its_own_vocabulary_is_distilled_end_to_end(ray_cluster, tiny_cfg, tmp_path):
    from advdistill.curate.stage import curate
    from advdistill.evaluation.evaluator import evaluate
    from advdistill.train.trainer import train

    student_dir = tmp_path / "student"
    student_tok = own_student(student_dir)
    teacher_tok = AutoTokenizer.from_pretrained(TINY_TEACHER)
    assert len(student_tok) != len(teacher_tok) and student_tok.get_vocab() != teacher_tok.get_vocab()

    cfg = with_overrides(tiny_cfg, {"student": str(student_dir), "curate.dataset.limit": 12, "curate.engine.batch_size": 6,
                                    "train.epochs": 1, "train.groups_per_step": 4, "train.num_workers": 1,
                                    "train.val_fraction": 0.0, "train.checkpoint_every": 100})
    summary = curate(cfg, tmp_path / "curate")
    assert summary["kept"] > 0
    rows = [r for f in (tmp_path / "curate" / "groups").glob("*.parquet") for r in pq.read_table(f).to_pylist()]
    # Curation: the rewards' L is the teacher's token count (stop token included where it stopped).
    for row in rows:
        assert row["token_lengths"] == [len(teacher_tok(t, add_special_tokens=False)["input_ids"]) + (f == "stop")
                                        for t, f in zip(row["responses"], row["finish_reasons"])]
    # Collation: the loss's tokens are the student's, and they spell the same text.
    eot = student_end_of_turn_id(student_tok)
    differs = False
    for row in rows:
        group = tokenize_group(row, student_tok, cfg, eot)
        for text, ids, reason in zip(row["responses"], group["response_ids"], row["finish_reasons"]):
            body = ids[:-1] if reason == "stop" else ids
            assert student_tok.decode(body) == text and (reason != "stop" or ids[-1] == eot)
            differs |= len(ids) != len(teacher_tok(text, add_special_tokens=False)["input_ids"]) + (reason == "stop")
    assert differs  # the two vocabularies really cut the text differently

    result = train(cfg, tmp_path / "curate", tmp_path / "train")
    assert result["step"] >= 1 and result["tokens"] > 0
    final = tmp_path / "train" / "final"
    assert AutoTokenizer.from_pretrained(final).get_vocab() == student_tok.get_vocab()
    metrics = evaluate(cfg, str(final), DatasetConfig(name="synthetic", split="test", limit=6), tmp_path / "eval")
    assert metrics["n"] == 6
