"""bench/fidelity.py's and bench/ablations.py's tables from saved verdicts (no Ray, nothing
trained): an interval's n is the distinct items, the deterministic arms are one evaluation, and
related items are resampled together."""

import json
import sys

import numpy as np
import pytest

from advdistill.evaluation.stats import bootstrap_accuracy, paired_difference

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import ablations  # noqa: E402
import fidelity  # noqa: E402

IDS = [f"item-{i}" for i in range(8)]
CLUSTERS = {i: f"skeleton:{n // 2}" for n, i in enumerate(IDS)}  # 8 items, 4 skeletons of 2


def _verdicts(right: str) -> dict[str, bool]:
    return {i: c == "1" for i, c in zip(IDS, right)}


def _metrics() -> dict:
    return {"mean_tokens_correct": 50.0, "mean_tokens_incorrect": 60.0, "verbosity_ratio": 1.2,
            "degeneracy_correct": 0.1, "degeneracy_incorrect": 0.2,
            "template": {"all": 1.0, "think": 1.0, "answer": 1.0, "boxed": 1.0}}


@pytest.fixture()
def summary():
    splits = ("test", "ood")
    reference = {"teacher": {s: _verdicts("11111110") for s in splits}, "base": {s: _verdicts("10000000") for s in splits}}
    by_arm = {"sft": ["11110000", "11111100"], "advdistill": ["11100000", "11110000"],
              "advdistill-k3": ["11110000", "11100000"]}
    arms = {arm: {seed: {"splits": {s: _verdicts(rows[seed]) for s in splits}, "metrics": {s: _metrics() for s in splits},
                         "cost": {"step_seconds": 10.0, "tokens": 100}, "result": {"train_groups": 5}}
                  for seed in (0, 1)} for arm, rows in by_arm.items()}
    clusters = {s: dict(CLUSTERS) for s in splits}
    return fidelity.summarize(reference, {k: {s: _metrics() for s in splits} for k in reference}, arms, [0, 1],
                              {"sft": 1e-3, "advdistill": 3e-4}, {}, {}, clusters)


def test_deterministic_arms_count_their_items_once(summary):
    teacher = summary["accuracy"]["teacher"]["test"]
    assert (teacher["n"], teacher["clusters"], teacher["seeds"], teacher["deterministic"]) == (8, 4, 1, True)
    assert teacher["by_seed"] == [7 / 8] and teacher["seed_sd"] == 0.0
    expected = bootstrap_accuracy([c == "1" for c in "11111110"], list(CLUSTERS.values()))
    assert teacher["interval"] == [expected.low, expected.high]


def test_trained_arms_report_each_seed_and_resample_skeletons_and_seeds(summary):
    sft = summary["accuracy"]["sft"]["test"]
    assert sft["by_seed"] == [0.5, 0.75] and sft["mean"] == 0.625 and sft["seed_sd"] == pytest.approx(0.1767767)
    assert (sft["n"], sft["clusters"], sft["seeds"], sft["deterministic"]) == (8, 4, 2, False)
    diff = summary["differences"]["advdistill − sft"]["test"]
    rows = {arm: np.array([[c == "1" for c in r] for r in rows]) for arm, rows in
            {"advdistill": ["11100000", "11110000"], "sft": ["11110000", "11111100"]}.items()}
    assert diff == paired_difference(rows["advdistill"], rows["sft"], list(CLUSTERS.values())).as_dict()
    assert (diff["value"], diff["n"], diff["clusters"], diff["seeds"]) == (pytest.approx(-0.1875), 8, 4, 2)
    base = summary["differences"]["sft − base"]["test"]
    assert (base["value"], base["n"], base["seeds"]) == (pytest.approx(0.5), 8, 2)


def test_the_rendered_tables_name_the_method_and_the_design(summary):
    text = fidelity.render({**summary, "wall_seconds": 60.0})
    assert "cluster bootstrap (test: 8 items in 4 skeletons, ood: 8 items in 4 skeletons" in text
    assert "| Teacher | 87.5 (one evaluation) [" in text
    assert "| SFT | 62.5 (50.0, 75.0; sd 17.7) [" in text
    assert "| AdvDistill (K = 8) − SFT | -18.8 [" in text


def test_predictions_saved_before_clusters_get_them_from_the_generator(tmp_path):
    from advdistill.data.synthetic import make_split

    records = make_split("test", 5)
    rows = [{"id": r["id"], "correct": True} for r in records]
    (tmp_path / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert fidelity.item_clusters(tmp_path, "test") == {r["id"]: f"skeleton:{r['meta']['skeleton']}" for r in records}
    rows[0]["cluster"] = "named"
    (tmp_path / "predictions.jsonl").write_text("".join(json.dumps({**r, "cluster": r.get("cluster", "x")}) + "\n"
                                                        for r in rows))
    assert fidelity.item_clusters(tmp_path, "test")[records[0]["id"]] == "named"


def test_ablations_resample_skeletons_on_one_seed():
    verdicts = {"advdistill": "11100000", "sft": "11110000", "ablation-lam0": "11111100"}
    results = {arm: {"verdicts": {s: _verdicts(v) for s in ("val", "test", "ood")}, "cost": {"step_seconds": 1.0}}
               for arm, v in verdicts.items()}
    out = ablations.summarize(results, {"lam0": ("λ = 0", [], None)}, 0, 3e-4,
                              {s: dict(CLUSTERS) for s in ("val", "test", "ood")})
    lam0 = out["vs_advdistill"]["ablation-lam0"]["test"]
    assert (lam0["value"], lam0["n"], lam0["clusters"], lam0["seeds"]) == (pytest.approx(0.375), 8, 4, 1)
    assert out["accuracy"]["sft"]["test"]["clusters"] == 4
    text = ablations.render({**out, "wall_seconds": 60.0, "incorrect_overlap": {
        "incorrect_responses": 1, "mean": 0.9, "median": 0.9, "p10": 0.9}})
    assert "Intervals: 95% cluster bootstrap (val: 8 items in 4 skeletons" in text


class _GridRunner:
    """bench/fidelity.py's Runner without Ray: a run at rate lr scores `accuracy[lr]` of 8 val items."""

    task = "synthetic"

    def __init__(self, tmp_path, accuracy):
        self.tmp, self.accuracy, self.trained = tmp_path, accuracy, []

    def train(self, name, groups, mode, lr, seed, sets):
        self.trained.append(lr)
        return self.tmp / f"train-{name}-lr{lr:g}"

    def evaluate(self, name, model, splits, limit):
        lr = float(name.split("-lr")[1].split("-seed")[0])
        right = round(self.accuracy[lr] * len(IDS))
        folder = self.tmp / name
        folder.mkdir()
        (folder / "predictions.jsonl").write_text("".join(
            json.dumps({"id": i, "correct": n < right, "cluster": CLUSTERS[i]}) + "\n" for n, i in enumerate(IDS)))
        return {"val": folder}


@pytest.mark.parametrize("accuracy, tried, chosen, extended, at_edge", [
    # interior best: no extension
    ({3.16e-4: 0.5, 1e-3: 0.75, 3.16e-3: 0.25}, [3.16e-4, 1e-3, 3.16e-3], 1e-3, None, False),
    # best at the low edge: one half step below, which wins and is itself at the edge (reported)
    ({1e-4: 0.875, 3.16e-4: 0.75, 1e-3: 0.5, 3.16e-3: 0.25}, [3.16e-4, 1e-3, 3.16e-3, 1e-4], 1e-4, 1e-4, True),
    # best at the high edge, and the step above does worse: the edge rate stays, now interior
    ({1e-3: 0.25, 3.16e-3: 0.5, 1e-2: 0.375}, [1e-3, 3.16e-3, 1e-2], 3.16e-3, 1e-2, False),
    # a tie goes to the lower rate
    ({3.16e-4: 0.5, 1e-3: 0.75, 3.16e-3: 0.75}, [3.16e-4, 1e-3, 3.16e-3], 1e-3, None, False),
])
def test_a_rate_at_the_grids_edge_extends_it_by_one_half_step(tmp_path, accuracy, tried, chosen, extended, at_edge):
    runner = _GridRunner(tmp_path, accuracy)
    grid = [lr for lr in tried if lr != extended]
    s = fidelity.choose_rate(runner, "advdistill", "advdistill", [], tmp_path, 0, grid, 8)
    assert runner.trained == tried
    assert (s["chosen"], s["extended"], s["at_edge"]) == (chosen, extended, at_edge)
    assert (s["val_n"], s["val_clusters"]) == (8, 4)
    assert s["rates"][f"{chosen:g}"]["value"] == accuracy[chosen]
    # the choice's own noise: chosen − runner-up, paired on the same val items, skeletons resampled
    runner_up = s["runner_up"]
    assert s["chosen_minus_runner_up"]["value"] == pytest.approx(accuracy[chosen] - accuracy[runner_up])
    assert s["chosen_minus_runner_up"]["clusters"] == 4


def test_half_steps_are_a_tenth_of_a_decade_apart_in_square_roots():
    assert fidelity.half_step(1e-3, 1) == 3.16e-3 and fidelity.half_step(3.16e-4, -1) == 1e-4
    assert fidelity.half_step(fidelity.LR_GRID[-1], 1) == 1e-2


def test_clipping_is_the_share_of_steps_whose_pre_clip_norm_exceeds_the_limit(tmp_path):
    steps = [{"step": i, "step_seconds": 1.0, "tokens": 10 * i, "grad_norm": g} for i, g in enumerate([0.2, 0.6, 1.5, 0.5], 1)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(s) + "\n" for s in steps))
    cost = fidelity.training_cost(tmp_path, 0.5)
    assert (cost["clipped_share"], cost["grad_norm_median"], cost["steps"], cost["tokens"]) == (0.5, 0.55, 4, 40)
    assert "clipped_share" not in fidelity.training_cost(tmp_path)
