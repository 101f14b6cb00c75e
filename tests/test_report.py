"""The report's accuracy intervals and paired differences, on a hand-made run folder; its cost table."""

import json

import pytest

from advdistill.evaluation.metrics import summarize_predictions
from advdistill.report.build import paired_comparisons, write_report
from advdistill.report.tables import cost_table


def _write_eval(run, model, split, verdicts, clusters=None):
    folder = run / "eval" / f"{model}-{split}"
    folder.mkdir(parents=True)
    # Without clusters: predictions saved before they named them (each item then stands alone).
    rows = [{"id": f"q{i}", "response": "r", "tokens": 3, "correct": c, **({} if clusters is None else {"cluster": clusters[i]})}
            for i, c in enumerate(verdicts)]
    (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "metrics.json").write_text(json.dumps(summarize_predictions(rows)))


def _make_run(folder, clusters=None):
    # 40 items: base right on 10; SFT on those 10 and 10 more; AdvDistill on SFT's 20 and 4 more.
    verdicts = {"base": [i < 10 for i in range(40)], "sft": [i < 20 for i in range(40)],
                "advdistill": [i < 24 for i in range(40)], "teacher": [True] * 40}
    for model, v in verdicts.items():
        _write_eval(folder, model, "toy-test", v, clusters)
    (folder / "run.json").write_text(json.dumps({
        "name": "toy", "train_dataset": "toy-train", "splits": ["toy-test"], "ood": [],
        "models": {m: {"path": m, "few_shot": 0} for m in verdicts}, "stages": {}}))
    return folder


@pytest.fixture()
def run(tmp_path):
    return _make_run(tmp_path / "items")


@pytest.fixture()
def clustered_run(tmp_path):
    # The same verdicts, items in 10 clusters of 4 (q0–q3, q4–q7, …): AdvDistill's 4 extra items
    # (q20–q23) are one cluster.
    return _make_run(tmp_path / "clustered", clusters=[f"c{i // 4}" for i in range(40)])


def test_paired_comparisons_count_the_items_each_side_wins(run):
    comparisons = paired_comparisons(run, ["teacher", "base", "sft", "advdistill"], ["toy-test"])
    assert list(comparisons) == [("advdistill", "sft"), ("advdistill", "base"), ("sft", "base")]
    adv_sft = comparisons[("advdistill", "sft")]["toy-test"]
    assert adv_sft["value"] == pytest.approx(4 / 40)
    assert (adv_sft["only_a"], adv_sft["only_b"]) == (4, 0)
    # AdvDistill never loses an item to SFT here: no resample can make the difference negative.
    assert 0 <= adv_sft["low"] <= adv_sft["value"] <= adv_sft["high"]
    assert comparisons[("sft", "base")]["toy-test"]["value"] == pytest.approx(10 / 40)


def test_report_shows_intervals_and_differences(run):
    report = write_report(run).read_text()
    assert "toy-test (n = 40 items, 40 clusters)" in report and "cluster-bootstrap" in report
    assert "| Student AdvDistill | 60.00% [" in report
    assert "| Student AdvDistill − Student SFT | +10.0 [" in report and "(4 / 0)" in report


def test_related_items_are_resampled_together(run, clustered_run):
    pairs = ["teacher", "base", "sft", "advdistill"]
    alone = paired_comparisons(run, pairs, ["toy-test"])[("advdistill", "sft")]["toy-test"]
    together = paired_comparisons(clustered_run, pairs, ["toy-test"])[("advdistill", "sft")]["toy-test"]
    assert together["value"] == alone["value"] == pytest.approx(0.1) and together["clusters"] == 10
    # The whole difference is one cluster of 10, drawn K ~ Binomial(10, 1/10) times per resample:
    # K = 0 has probability 0.9^10 = 35%, P(K ≤ 2) = 93.0%, P(K ≤ 3) = 98.7%, so the 95% interval
    # is exactly [0, 3 × 4/40]; item by item, 4 separate items are rarely all missed.
    assert (together["low"], together["high"]) == (0.0, pytest.approx(0.3))
    assert alone["low"] > 0.0 and alone["high"] < 0.3
    report = write_report(clustered_run).read_text()
    assert "toy-test (n = 40 items, 10 clusters)" in report
    # SFT is right on clusters c0–c4 and wrong on c5–c9: its accuracy interval is five of ten clusters
    sft = next(line for line in report.splitlines() if line.startswith("| Student SFT | 50.00% ["))
    low = float(sft.split("[")[1].split(",")[0])
    assert low < 25.0  # item by item it would be about 35


def test_cost_table_prices_each_stage_and_totals_them():
    stages = {"curate": {"tokens": 17_500_000, "wall_seconds": 2160.0, "accelerator_hours": 2.4},
              "train-advdistill": {"tokens": 73_400_000, "wall_seconds": 1000.0, "accelerator_hours": 2.24},
              "eval-base": {"tokens": 900, "wall_seconds": 12.5, "accelerator_hours": 0.0, "skipped": True}}
    rows = cost_table(stages, accelerator_hour_price=2.5).splitlines()
    assert rows[0] == "| Stage | tokens | wall s | accelerator-hours | dollars | note |"
    # 2.4 h × $2.50 = $6.00; 2.24 h × $2.50 = $5.60; total 4.64 h = $11.60 over 3172.5 s.
    assert rows[2] == "| curate | 17,500,000 | 2160.0 | 2.4000 | 6.00 |  |"
    assert rows[3] == "| train-advdistill | 73,400,000 | 1000.0 | 2.2400 | 5.60 |  |"
    assert rows[4] == "| eval-base | 900 | 12.5 | 0.0000 | 0.00 | skipped (done earlier) |"
    assert rows[5] == "| **total** |  | 3172.5 | 4.6400 | 11.60 |  |"
    # Without a price (the default): no dollars column, the total row still.
    plain = cost_table(stages).splitlines()
    assert "dollars" not in plain[0] and plain[-1] == "| **total** |  | 3172.5 | 4.6400 |  |"
