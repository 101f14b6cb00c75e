"""Why AdvDistill trails or beats SFT: one change at a time, on a finished `bench/fidelity.py` run.

    python bench/ablations.py --run runs/fidelity            # after bench/fidelity.py
    python bench/ablations.py --run runs/fidelity --only lam0
    python bench/ablations.py --rates 3e-4 1e-3   # while fidelity runs its other seeds

Each ablation trains AdvDistill on the fidelity run's seed-0 kept groups, at the learning rate
fidelity chose for AdvDistill on `val`, with one setting changed (the method's definition itself
is never changed to get a number: these are diagnoses, listed as such in bench/RESULTS.md), and
evaluates it on the same val, test and OOD items as the run's arms. Reported: each accuracy and
the paired difference against AdvDistill as defined and against SFT, on the same items, each with
a 95% cluster-bootstrap interval (the items' arithmetic skeletons resampled whole;
`advdistill.evaluation.stats`). Stages go through the command-line contract, as in fidelity.
`--saved` recomputes the tables from a finished run's saved verdicts, with no Ray.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from common import REPO, header
from fidelity import Runner, item_clusters, start_cluster, stop_cluster, training_cost, verdicts

sys.path.insert(0, str(REPO))

from advdistill.evaluation.stats import bootstrap_accuracy, paired_difference  # noqa: E402

ABLATIONS = {  # slug → (what changes, config overrides, learning rate if not AdvDistill's chosen one)
    "lam0": ("no contrastive penalty (λ = 0)", ["train.loss.lam=0"], None),
    "lam0.1": ("a weaker contrastive penalty (λ = 0.1)", ["train.loss.lam=0.1"], None),
    "tau2": ("flatter advantage weights (τ = 2)", ["train.loss.tau=2.0"], None),
    "unpacked": ("shared-prefix packing off (same loss, K separate sequences)", ["train.shared_prefix_packing=false"],
                 None),
    # bench/fidelity.py now extends its grid past a rate chosen at an edge (and runs λ = 0 at its own
    # rate on every seed); this one-seed probe below an old grid is kept for comparison with it.
    "lr1e-4": ("learning rate 1e-4, below the grid", [], 1e-4),
}
SPLITS = ("val", "test", "ood")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default=str(REPO / "runs" / "fidelity"), help="a finished bench/fidelity.py --out")
    parser.add_argument("--config", default=str(REPO / "configs" / "tiny.yaml"))
    parser.add_argument("--only", nargs="+", choices=sorted(ABLATIONS), help="run these ablations only")
    parser.add_argument("--items", type=int, default=1000, help="test and OOD items (as in the fidelity run)")
    parser.add_argument("--val-items", type=int, default=500)
    parser.add_argument("--rates", type=float, nargs=2, metavar=("ADVDISTILL", "SFT"),
                        help="the learning rates fidelity chose on val, when its fidelity.json is not written yet "
                             "(it is written at its end; the choice is made after its seed-0 grid)")
    parser.add_argument("--saved", action="store_true",
                        help="no Ray, nothing run: recompute ablations.json/md from the stages saved in --run")
    args = parser.parse_args()
    run = Path(args.run)
    if args.rates:
        fidelity = {"seeds": [0], "learning_rates": {"advdistill": args.rates[0], "sft": args.rates[1]}}
    else:
        fidelity = json.loads((run / "fidelity.json").read_text())
    seed = fidelity["seeds"][0]
    lr = fidelity["learning_rates"]["advdistill"]
    header("Ablations of AdvDistill on the fidelity run's seed-0 groups", "python bench/ablations.py " + " ".join(sys.argv[1:]))
    chosen = {slug: ABLATIONS[slug] for slug in (args.only or ABLATIONS)}
    started = time.perf_counter()
    if not args.saved:
        os.environ["RAY_ADDRESS"] = start_cluster(num_cpus=max(os.cpu_count() or 1, 4))
    runner = Runner(run, args.config, [], run / "ablations.log", saved_only=args.saved)
    limits = {"val": args.val_items, "test": args.items, "ood": args.items}
    try:
        groups = runner.curate(seed)  # done by fidelity: skipped
        arms = {"sft": ("sft", fidelity["learning_rates"]["sft"], []), "advdistill": ("advdistill", lr, [])}
        arms.update({f"ablation-{slug}": ("advdistill", own_lr or lr, sets) for slug, (_, sets, own_lr) in chosen.items()})
        results, clusters = {}, {}
        for arm, (mode, arm_lr, sets) in arms.items():
            folder = runner.train(arm, groups, mode, arm_lr, seed, sets)
            # fidelity evaluated the grid runs on val as `{method}-lr{lr}-seed{seed}`, the arms on
            # test/OOD as `{arm}-seed{seed}`; the same names here reuse those evaluations.
            evaluated = {"val": runner.evaluate(f"{arm}-lr{arm_lr:g}-seed{seed}-val", folder / "final", ["val"],
                                                limits["val"])["val"],
                         **runner.evaluate(f"{arm}-seed{seed}", folder / "final", ["test", "ood"], limits["test"])}
            results[arm] = {"cost": training_cost(folder),
                            "verdicts": {split: verdicts(out) for split, out in evaluated.items()}}
            if not clusters:  # every arm is evaluated on the same items: the first one's name their clusters
                clusters = {split: item_clusters(evaluated[split], split) for split in SPLITS}
    finally:
        if not args.saved:
            stop_cluster()
    out = summarize(results, chosen, seed, lr, clusters)
    from advdistill.config import load_config

    out["incorrect_overlap"] = incorrect_overlap(groups, load_config(args.config).student)
    previous = run / "ablations.json"
    out["wall_seconds"] = (json.loads(previous.read_text())["wall_seconds"] if args.saved and previous.is_file()
                           else time.perf_counter() - started)
    (run / "ablations.json").write_text(json.dumps(out, indent=2))
    report = render(out)
    (run / "ablations.md").write_text(report)
    print(report)


def incorrect_overlap(groups: Path, tokenizer_path: str) -> dict[str, float]:
    """How much of an incorrect response the contrastive penalty pushes down is also in a correct
    response of its group: per incorrect response, the share of its tokens in the longest common
    subsequence blocks (difflib) with the best-matching correct response. High shares mean the
    penalty, which lowers the *mean* token probability of the whole response, mostly lowers
    tokens the correct responses contain too."""
    import difflib

    import numpy as np
    from transformers import AutoTokenizer

    from advdistill.curate.store import read_shards

    table = read_shards(groups / "groups", ["responses", "correct"])
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    shares = []
    for responses, correct in zip(table.column("responses").to_pylist(), table.column("correct").to_pylist()):
        ids = tokenizer(responses, add_special_tokens=False)["input_ids"]
        right = [ids[i] for i, c in enumerate(correct) if c]
        for i in (i for i, c in enumerate(correct) if not c):
            matched = max(sum(b.size for b in difflib.SequenceMatcher(None, ids[i], r, autojunk=False).get_matching_blocks())
                          for r in right)
            shares.append(matched / max(1, len(ids[i])))
    return {"incorrect_responses": len(shares), "mean": float(np.mean(shares)), "median": float(np.median(shares)),
            "p10": float(np.percentile(shares, 10))}


def summarize(results: dict, chosen: dict, seed: int, lr: float, clusters: dict[str, dict[str, str]]) -> dict:
    """`results[arm]["verdicts"][split]`: {item: correct}; `clusters[split]`: {item: cluster}."""
    out = {"seed": seed, "lr": lr, "ablations": {slug: what for slug, (what, _, _) in chosen.items()},
           "interval": "cluster bootstrap, 95% (one seed)", "accuracy": {}, "vs_advdistill": {}, "vs_sft": {},
           "cost": {}}
    for arm, r in results.items():
        for split in SPLITS:
            v = r["verdicts"][split]
            ids = sorted(clusters[split])
            if sorted(v) != ids:
                raise ValueError(f"{arm} was not evaluated on the run's {split} items")
            groups = [clusters[split][i] for i in ids]
            out["accuracy"].setdefault(arm, {})[split] = bootstrap_accuracy([v[i] for i in ids], groups).as_dict()
            for ref, key in (("advdistill", "vs_advdistill"), ("sft", "vs_sft")):
                if arm == ref:
                    continue
                base = results[ref]["verdicts"][split]
                if sorted(base) != ids:
                    raise ValueError(f"{arm} and {ref} were not evaluated on the same {split} items")
                d = paired_difference([v[i] for i in ids], [base[i] for i in ids], groups)
                out[key].setdefault(arm, {})[split] = d.as_dict()
        out["cost"][arm] = r["cost"]
    return out


def render(r: dict) -> str:
    def pct(x: float) -> str:
        return f"{100 * x:.1f}"

    def diff(d: dict) -> str:
        return f"{100 * d['value']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]"

    labels = {"sft": "SFT", "advdistill": "AdvDistill (as defined)",
              **{f"ablation-{slug}": f"AdvDistill, {what}" for slug, what in r["ablations"].items()}}
    first = next(iter(r["accuracy"].values()))
    design = ", ".join(f"{s}: {first[s]['n']:,} items in {first[s]['clusters']:,} skeletons" for s in SPLITS)
    lines = [f"Seed {r['seed']}, AdvDistill's learning rate {r['lr']:g} (chosen on val by bench/fidelity.py); "
             f"wall {r['wall_seconds'] / 60:.0f} min. Intervals: 95% cluster bootstrap ({design}).", "",
             "| Arm | val | test [95%] | OOD [95%] | test − AdvDistill | OOD − AdvDistill | test − SFT | OOD − SFT | steps s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for arm, acc in r["accuracy"].items():
        cells = [pct(acc["val"]["value"])]
        cells += [f"{pct(acc[s]['value'])} [{pct(acc[s]['low'])}, {pct(acc[s]['high'])}]" for s in ("test", "ood")]
        for key in ("vs_advdistill", "vs_sft"):
            cells += [diff(r[key][arm][s]) if arm in r[key] else "–" for s in ("test", "ood")]
        cells.append(f"{r['cost'][arm]['step_seconds']:.0f}")
        lines.append(f"| {labels.get(arm, arm)} | " + " | ".join(cells) + " |")
    o = r["incorrect_overlap"]
    lines += ["", f"What the contrastive penalty pushes down: over the {o['incorrect_responses']} incorrect responses of the "
              f"kept groups, the share of each one's tokens that a correct response of its group also has (in order, "
              f"difflib blocks): mean {o['mean']:.1%}, median {o['median']:.1%}, 10th percentile {o['p10']:.1%}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
