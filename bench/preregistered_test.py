"""The verdict of the pre-registered test (bench/preregistration.md), by its own rule, from a
finished `bench/fidelity.py` run on the chosen variant. Nothing is trained or chosen here.

    python bench/preregistered_test.py --run runs/relations-v1

Reads the saved verdicts of the SFT and AdvDistill arms on every seed (`eval/{arm}-seed{s}/{test,ood}`),
and computes, on each split, the estimand — the mean over seeds of acc(AdvDistill) − acc(SFT) on
the same items — with its paired cluster bootstrap (`advdistill.evaluation.stats`: 10,000
replicates, clusters drawn once for every seed, seeds resampled at a second level), then:
- test (primary): `decide` on the 95% interval;
- OOD (secondary, Holm over the two splits at α = 0.05): two-sided bootstrap p-values from the
  same replicates; OOD is supported or contradicted only if its Holm-adjusted p < 0.05 (and, for
  supported, its estimate ≥ +1 point); equivalent if its 97.5% interval lies inside ±1 point.
Writes `verdict.json` into the run folder and prints the table RESULTS quotes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from common import REPO
from fidelity import item_clusters, verdicts

sys.path.insert(0, str(REPO))

from advdistill.evaluation.stats import bootstrap_replicates, paired_difference  # noqa: E402

ALPHA = 0.05
MARGIN = 0.01  # ±1 point: the equivalence margin and the least effect called support
SPLITS = ("test", "ood")


def decide(value: float, low: float, high: float, margin: float = MARGIN) -> str:
    """The pre-registered rule on an estimate and its interval (fractions, not points)."""
    if low > 0 and value >= margin:
        return "supported"
    if high < 0:
        return "contradicted"
    if -margin < low and high < margin:
        return "equivalent"
    return "inconclusive"


def p_value(replicates: np.ndarray) -> float:
    """Two-sided percentile-bootstrap p-value of 'no difference'."""
    return float(min(1.0, 2 * min(np.mean(replicates <= 0), np.mean(replicates >= 0))))


def holm(p: dict[str, float]) -> dict[str, float]:
    """Holm-adjusted p-values (step-down, monotone)."""
    order = sorted(p, key=p.get)
    adjusted, running = {}, 0.0
    for rank, name in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p[name]))
        adjusted[name] = running
    return adjusted


def secondary(value: float, adjusted_p: float, low: float, high: float, margin: float = MARGIN) -> str:
    """The OOD verdict: significance by the Holm-adjusted p, equivalence by the (1 − α/2) interval."""
    if adjusted_p < ALPHA and value >= margin:
        return "supported"
    if adjusted_p < ALPHA and value < 0:
        return "contradicted"
    if -margin < low and high < margin:
        return "equivalent"
    return "inconclusive"


def analyse(rows: dict[str, dict[str, np.ndarray]], clusters: dict[str, list[str]]) -> dict:
    """`rows[arm][split]`: seeds × items verdicts (items in one order); `clusters[split]`: per item."""
    out: dict = {"estimand": "mean over seeds of acc(AdvDistill) − acc(SFT), paired, cluster bootstrap", "splits": {}}
    p = {}
    for split in SPLITS:
        a, b = rows["advdistill"][split], rows["sft"][split]
        d95 = paired_difference(a, b, clusters[split])
        d975 = paired_difference(a, b, clusters[split], confidence=1 - ALPHA / 2)
        p[split] = p_value(bootstrap_replicates(a.astype(float) - b.astype(float), clusters[split]))
        out["splits"][split] = {"difference": d95.as_dict(), "interval_97_5": [d975.low, d975.high], "p": p[split],
                                "by_seed": (a.mean(axis=1) - b.mean(axis=1)).tolist()}
    adjusted = holm(p)
    test = out["splits"]["test"]["difference"]
    out["splits"]["test"]["holm_p"] = adjusted["test"]
    out["splits"]["test"]["verdict"] = decide(test["value"], test["low"], test["high"])
    ood = out["splits"]["ood"]
    ood["holm_p"] = adjusted["ood"]
    ood["verdict"] = secondary(ood["difference"]["value"], adjusted["ood"], *ood["interval_97_5"])
    out["verdict"] = out["splits"]["test"]["verdict"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="the bench/fidelity.py --out of the pre-registered run")
    args = parser.parse_args()
    run = Path(args.run)
    fidelity = json.loads((run / "fidelity.json").read_text())
    seeds = fidelity["seeds"]
    task = fidelity.get("task", "synthetic")
    rows: dict[str, dict[str, np.ndarray]] = {}
    clusters: dict[str, list[str]] = {}
    for split in SPLITS:
        first = run / "eval" / f"sft-seed{seeds[0]}" / split
        cluster_of = item_clusters(first, split, task)
        ids = sorted(cluster_of)
        clusters[split] = [cluster_of[i] for i in ids]
        for arm in ("sft", "advdistill"):
            per_seed = [verdicts(run / "eval" / f"{arm}-seed{s}" / split) for s in seeds]
            if any(sorted(v) != ids for v in per_seed):
                raise SystemExit(f"{arm} was not evaluated on the same {split} items on every seed")
            rows.setdefault(arm, {})[split] = np.array([[v[i] for i in ids] for v in per_seed], dtype=bool)
    out = {"run": str(run), "seeds": seeds, "learning_rates": fidelity["learning_rates"], **analyse(rows, clusters)}
    (run / "verdict.json").write_text(json.dumps(out, indent=2))
    print("| split | AdvDistill − SFT (points) | 95% | 97.5% | p | Holm p | verdict |\n|---|---|---|---|---|---|---|")
    for split in SPLITS:
        s = out["splits"][split]
        d = s["difference"]
        print(f"| {split} | {100 * d['value']:+.1f} (seeds {', '.join(f'{100 * x:+.1f}' for x in s['by_seed'])}) | "
              f"[{100 * d['low']:+.1f}, {100 * d['high']:+.1f}] | [{100 * s['interval_97_5'][0]:+.1f}, "
              f"{100 * s['interval_97_5'][1]:+.1f}] | {s['p']:.4f} | {s['holm_p']:.4f} | {s['verdict']} |")
    print(f"\nH1 (test, primary): {out['verdict']}")


if __name__ == "__main__":
    main()
