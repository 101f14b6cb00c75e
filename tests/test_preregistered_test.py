"""bench/preregistered_test.py: the pre-registered decision rule, Holm's adjustment and the
analysis of saved verdicts (bench/preregistration.md) — no Ray, nothing trained."""

import sys

import numpy as np
import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import preregistered_test as prt  # noqa: E402


@pytest.mark.parametrize("value, low, high, verdict", [
    (0.02, 0.005, 0.035, "supported"),
    (0.008, 0.001, 0.015, "inconclusive"),  # above zero but under +1 point, interval past +1
    (0.005, 0.001, 0.009, "equivalent"),  # above zero, too small to count as support, inside ±1
    (-0.02, -0.035, -0.005, "contradicted"),
    (0.0, -0.008, 0.008, "equivalent"),
    (0.0, -0.02, 0.02, "inconclusive"),
])
def test_decision_rule(value, low, high, verdict):
    assert prt.decide(value, low, high) == verdict


def test_holm_adjusts_step_down_and_stays_monotone():
    assert prt.holm({"test": 0.01, "ood": 0.04}) == {"test": 0.02, "ood": 0.04}
    assert prt.holm({"test": 0.03, "ood": 0.02}) == {"ood": 0.04, "test": 0.04}
    assert prt.holm({"test": 0.6, "ood": 0.9}) == {"test": 1.0, "ood": 1.0}


def test_analysis_of_seeds_by_items_verdicts():
    rng = np.random.default_rng(0)
    n = 400
    sft = rng.random((3, n)) < 0.5
    better = sft | (rng.random((3, n)) < 0.2)  # AdvDistill right wherever SFT is, and on ~10% more
    same = sft.copy()
    clusters = [f"item-{i}" for i in range(n)]
    out = prt.analyse({"advdistill": {"test": better, "ood": same}, "sft": {"test": sft, "ood": sft}},
                      {"test": clusters, "ood": clusters})
    test, ood = out["splits"]["test"], out["splits"]["ood"]
    assert test["verdict"] == "supported" and test["difference"]["value"] > 0.05 and test["holm_p"] < 0.05
    assert ood["difference"]["value"] == 0.0 and ood["p"] == 1.0 and ood["verdict"] == "equivalent"
    assert out["verdict"] == "supported" and len(test["by_seed"]) == 3
