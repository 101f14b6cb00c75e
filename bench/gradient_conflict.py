"""Do the two terms of the AdvDistill loss pull the student the same way? The cosine between the
gradient of the advantage-weighted cross-entropy and that of the contrastive penalty, at the
student base's weights, on curated groups (the manipulation check of bench/preregistration.md).

    python bench/gradient_conflict.py --groups runs/tiny/curate                        # synthetic
    python bench/gradient_conflict.py --groups runs/relations-v1/seed-0/curate --config configs/relations-v1.yaml

For each kept group with an incorrect response (the penalty is zero elsewhere), the training code's
own path — `tokenize_group`, the configured layout (`make_batch`), `ResponseLogProbs`,
`advdistill_loss_terms` with `train.loss` — gives Σ w_i·CE_i and (λ/N)·Σ_{i∈I} C_i; their gradients
over every parameter are compared. Reported: the per-group cosine (mean, median, share below 0)
and the cosine of the two gradients summed over all the groups measured (what one step over them
would see), with the ratio of their norms. Negative: the penalty pushes down what the weighted
cross-entropy pulls up. The model is not updated.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from common import REPO

sys.path.insert(0, str(REPO))


def flat_grad(loss, params):
    import torch

    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)])


def measure(groups: Path, cfg, student: str, limit: int) -> dict:
    """The per-group cosines and the cosine of the summed gradients over at most `limit` kept
    groups with an incorrect response, in id order."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from advdistill.curate.store import read_shards
    from advdistill.loss import advdistill_loss_terms
    from advdistill.train.collate import tokenize_group
    from advdistill.train.group_batches import model_inputs
    from advdistill.train.loop import make_batch, packed_attention
    from advdistill.train.model import ResponseLogProbs

    tokenizer = AutoTokenizer.from_pretrained(student)
    lm = AutoModelForCausalLM.from_pretrained(student, dtype=torch.float32)
    model = ResponseLogProbs(lm, chunk_size=cfg.train.loss.chunk_size, packed_attention=packed_attention(cfg, "cpu"))
    model.eval()  # no dropout: the gradient of the weights as they are
    params = [p for p in model.parameters() if p.requires_grad]
    pad_id = lm.config.pad_token_id if lm.config.pad_token_id is not None else 0
    loss_cfg = cfg.train.loss
    rows = sorted(read_shards(groups / "groups").to_pylist(), key=lambda r: r["id"])
    cosines, total_ce, total_c = [], None, None
    for row in rows:
        if all(row["correct"]):
            continue
        group = tokenize_group(row, tokenizer, cfg)
        if not group["keep"] or not group["response_ids"]:
            continue
        batch = make_batch(group, cfg, pad_id)
        logprobs, mask = model(**model_inputs(batch))
        terms = advdistill_loss_terms(logprobs, mask, batch["advantages"], batch["correct"], tau=loss_cfg.tau,
                                      lam=loss_cfg.lam, delta=loss_cfg.delta)
        g_ce, g_c = flat_grad(terms.weighted_ce, params), flat_grad(terms.contrastive, params)
        cosines.append(float(torch.nn.functional.cosine_similarity(g_ce, g_c, dim=0)))
        total_ce = g_ce if total_ce is None else total_ce + g_ce
        total_c = g_c if total_c is None else total_c + g_c
        if len(cosines) >= limit:
            break
    if not cosines:
        raise SystemExit("no kept group with an incorrect response")
    return {"lam": loss_cfg.lam, "tau": loss_cfg.tau, "groups_measured": len(cosines),
            "cosine_mean": statistics.fmean(cosines), "cosine_median": statistics.median(cosines),
            "share_negative": sum(c < 0 for c in cosines) / len(cosines),
            "cosine_of_sums": float(torch.nn.functional.cosine_similarity(total_ce, total_c, dim=0)),
            "norm_ratio_of_sums": float(total_c.norm() / total_ce.norm())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", required=True, help="a curation folder (its groups/ are read)")
    parser.add_argument("--config", default=str(REPO / "configs" / "tiny.yaml"))
    parser.add_argument("--student", help="the model whose gradients are compared (default: the config's student)")
    parser.add_argument("--limit", type=int, default=300, help="groups with an incorrect response, at most")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from advdistill.config import load_config

    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, ["train.method=advdistill"])
    student = args.student or cfg.student
    student = str(REPO / student) if not Path(student).is_absolute() else student
    out = {"groups": args.groups, "student": args.student or cfg.student,
           **measure(Path(args.groups), cfg, student, args.limit)}
    (Path(args.groups) / "gradient_conflict.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
