"""The relations variants (advdistill.data.relations; issue 28.4): determinism, splits disjoint by
skeleton, one item per skeleton where the pre-registration needs it, references the verifier
accepts, the features each variant adds, and the gates' figures (bench/variant_gates.py)."""

import re
import sys

import pytest

from advdistill.config import DatasetConfig
from advdistill.data.loaders import load_records
from advdistill.data.relations import _BUCKETS, VARIANTS, make_split
from advdistill.data.synthetic import _bucket
from advdistill.scoring import format_reward, is_correct
from advdistill.tasks import RELATIONS_SIZES, record_cluster

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import variant_gates  # noqa: E402


def test_splits_are_deterministic_prefix_stable_and_seeded():
    a, b = make_split("relations_v2", "test", 50), make_split("relations_v2", "test", 80)
    assert a == b[:50] and make_split("relations_v2", "test", 50, seed=1) != a
    assert len({r["id"] for r in b}) == 80 and all(r["task"] == "relations_v2" for r in b)


@pytest.mark.parametrize("variant", VARIANTS)
def test_no_skeleton_in_two_splits_and_one_item_per_skeleton_outside_train(variant):
    skeletons = {}
    for split in ("train", "curate", "val", "test", "ood"):
        records = make_split(variant, split, 3000 if split == "train" else RELATIONS_SIZES[split] // 2)
        skeletons[split] = [r["meta"]["skeleton"] for r in records]
        if split != "train":
            assert len(set(skeletons[split])) == len(records), split
    for a in skeletons:
        for b in skeletons:
            if a < b:
                assert not set(skeletons[a]) & set(skeletons[b]), (a, b)
    assert {len(re.findall(r"[-+*/]", s)) for s in skeletons["ood"]} == {4}
    assert {len(re.findall(r"[-+*/]", s)) for s in skeletons["test"]} == {2, 3}


def test_the_build_corpus_never_holds_a_curation_problem():
    # what tools/build_tiny_models.py --task <variant> trains on: the first 40,000 train problems
    for variant in VARIANTS:
        train = make_split(variant, "train", 40000)
        curate = make_split(variant, "curate", RELATIONS_SIZES["curate"])
        assert not {r["meta"]["skeleton"] for r in train} & {r["meta"]["skeleton"] for r in curate}
        assert not {r["question"] for r in train} & {r["question"] for r in curate}


@pytest.mark.parametrize("variant", VARIANTS)
def test_reference_solutions_verify_and_compute_the_chain(variant):
    for split in ("train", "test", "ood"):
        for r in make_split(variant, split, 300):
            solution = r["meta"]["solution"]
            assert format_reward(solution) == 1.0 and is_correct(solution, r["reference"], variant)
            assert not is_correct(solution, str(int(r["reference"]) + 1), variant)
            equations = re.findall(r"(\d+) ([-+*/]) (\d+) = (\d+)", solution)
            assert len(equations) == r["meta"]["num_ops"] and equations[-1][3] == r["reference"]
            for a, sym, b, c in equations:
                assert {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b), "/": int(a) // int(b)}[sym] == int(c)
                assert 0 < int(c) <= 100
            # the skeleton named is the one whose hash put the problem in its split
            tag, body = r["meta"]["skeleton"].split(":")
            start, ops = re.match(r"\d+", body).group(), re.findall(r"([-+*/])(\d+)", body)
            kinds = {"+": "add", "-": "sub", "*": "mul", "/": "div"}
            assert _bucket((tag, int(start), tuple((kinds[s], int(b)) for s, b in ops))) in _BUCKETS[split]


def _sentences(question):
    return question.split(" How many ")[0].split(". ")


def test_variants_add_shuffling_either_side_relations_and_distractors():
    v1, v2, v3 = (make_split(v, "test", 400) for v in VARIANTS)
    # v1: the given count first, every relation defines a new person from the one before
    assert all(re.fullmatch(r"\w+ (has|owns) \d+ \w+", _sentences(r["question"])[0]) for r in v1)
    assert all(len(_sentences(r["question"])) == r["meta"]["num_ops"] + 1 for r in v1 + v2)
    # v2: the given count is not always first; v3: a sentence more in about half of the problems
    assert 0.4 < sum(not re.fullmatch(r"\w+ (has|owns) \d+ \w+", _sentences(r["question"])[0]) for r in v2) / 400
    extra = sum(len(_sentences(r["question"])) == r["meta"]["num_ops"] + 2 for r in v3) / 400
    assert 0.4 < extra < 0.6


def test_correct_solutions_are_phrased_several_ways():
    # the first words of each solution line: several phrasings for the given count and for a step
    openings = {"anchor": set(), "step": set()}
    for r in make_split("relations_v2", "test", 300):
        lines = r["meta"]["solution"].split("<think>\n")[1].split("\n</think>")[0].splitlines()
        openings["anchor"].add(re.sub(r"\d+|\b[A-Z][a-z]+\b", "_", lines[0]).split(" has")[0])
        for line in lines[1:]:
            openings["step"].add(re.sub(r"[A-Z][a-z]+|\d+|\w+'s", "_", line).split(" ")[0:2].__str__())
    assert len(openings["anchor"]) == 3 and len(openings["step"]) >= 3


def test_variants_are_registered_tasks_with_skeleton_clusters():
    for variant in VARIANTS:
        records = load_records(DatasetConfig(name=variant, split="val", limit=5)).records
        assert [r["id"] for r in records] == [r["id"] for r in make_split(variant, "val", 5)]
        assert record_cluster(records[0]) == f"skeleton:{records[0]['meta']['skeleton']}"


def test_gate_figures_by_hand():
    # one prompt, 2 correct and 2 incorrect responses; one prompt all wrong (dropped); one all right
    right = "<think>\nAva has 6.\n6 + 4 = 10.\n</think>\n<answer>\n\\boxed{10}\n</answer>"
    also_right = "<think>\nWe know Ava has 6.\n6 + 4 = 10.\n</think>\n<answer>\n\\boxed{10}\n</answer>"
    late = "<think>\nAva has 6.\n6 + 4 = 11.\n</think>\n<answer>\n\\boxed{11}\n</answer>"  # departs at 11
    early = "<think>\nAva has 4.\n4 + 6 = 10.\n</think>\n<answer>\n\\boxed{10}\n</answer>"  # departs at the first 4
    texts = [right, also_right, late, early]
    ids = [list(t.encode()) for t in texts]  # bytes as tokens
    groups = [(texts, ids, [True, True, False, False]), ([late], [list(late.encode())], [False]),
              ([right], [list(right.encode())], [True])]
    f = variant_gates.gate_figures(groups)
    assert (f["prompts"], f["samples"], f["incorrect_in_kept_groups"]) == (3, 6, 2)
    assert f["per_sample_accuracy"] == 3 / 6 and f["mixed_groups"] == 1 / 3
    late_share, early_share = late.index("11") / len(late), early.index("4") / len(early)
    assert f["median_first_divergence"] == pytest.approx((late_share + early_share) / 2)
    # raw bytes share the "1" of "10" and "11": the token prefix runs one further than the number's start
    assert f["median_token_divergence"] == pytest.approx(((late.index("11") + 1) / len(late) + early_share) / 2)
    assert 0.8 < f["mean_overlap"] < 1.0
    assert early_share < late_share and f["median_first_divergence"] <= 0.4  # the median of two: their mean
    assert variant_gates.verdicts(f) == {"per_sample_accuracy": False, "mixed_groups": False,
                                         "median_first_divergence": True, "mean_overlap": False}


def test_gradient_conflict_of_a_near_copy_is_negative(tmp_path, tiny_cfg, tiny_tokenizer):
    """bench/gradient_conflict.py on groups whose wrong response copies a right one but for its
    boxed answer: the penalty pushes down what the weighted cross-entropy pulls up."""
    import gradient_conflict
    from groups_fixture import write_groups

    from advdistill.config import with_overrides
    from conftest import TINY_STUDENT

    cfg = with_overrides(tiny_cfg, {"train.method": "advdistill"})
    write_groups(tmp_path, tiny_tokenizer, cfg, n=3)
    out = gradient_conflict.measure(tmp_path, cfg, str(TINY_STUDENT), limit=2)
    assert out["groups_measured"] == 2 and out["lam"] == cfg.train.loss.lam
    assert -1 <= out["cosine_median"] < 0 and out["cosine_of_sums"] < 0
