"""SPEC §4–§5 formulas against hand-computed values."""

import math

import numpy as np
import pytest

from advdistill.config import AdvantageConfig, RewardConfig
from advdistill.methods import best_response
from advdistill.scoring import (
    advantage_weights,
    composite_reward,
    cosine_reward,
    format_reward,
    group_advantages,
    keep_group,
    score_group,
)

GOOD = "<think>\n3 + 4 = 7\n</think>\n<answer>\n\\boxed{7}\n</answer>"


@pytest.mark.parametrize(
    "length, correct, expected",
    [
        (0, True, 1.0),  # r_start
        (1024, True, 0.75),  # cos(pi/2) = 0: midpoint of 1.0 and 0.5
        (2048, True, 0.5),  # r_end
        (5000, True, 0.5),  # capped at L_max
        (0, False, -0.5),
        (1024, False, -0.75),
        (2048, False, -1.0),
        (9999, False, -1.0),
    ],
)
def test_cosine_reward_endpoints_and_midpoint(length, correct, expected):
    assert cosine_reward(length, correct) == pytest.approx(expected, abs=1e-12)


def test_cosine_reward_quarter_length_by_hand():
    # L = 512: c = cos(pi/4) = sqrt(2)/2; R = 0.5 + 0.25 * (1 + c)
    assert cosine_reward(512, True) == pytest.approx(0.5 + 0.25 * (1 + math.sqrt(2) / 2))
    assert cosine_reward(512, False) == pytest.approx(-1.0 + 0.25 * (1 + math.sqrt(2) / 2))


def test_cosine_reward_truncated_is_incorrect_at_lmax():
    assert cosine_reward(10, True, truncated=True) == pytest.approx(-1.0)


def test_cosine_reward_custom_config():
    cfg = RewardConfig(max_len=100, correct_start=2.0, correct_end=1.0)
    assert cosine_reward(50, True, cfg=cfg) == pytest.approx(1.5)


def test_concise_correct_beats_long_correct_and_long_wrong_is_worst():
    assert cosine_reward(100, True) > cosine_reward(1500, True) > 0 > cosine_reward(100, False) > cosine_reward(1500, False)


@pytest.mark.parametrize(
    "text, expected",
    [
        (GOOD, 1.0),
        ("  " + GOOD + "\n\n", 1.0),
        ("<think>x</think><answer>\\boxed{1}</answer>", 1.0),
        ("<think> </think><answer>\\boxed{1}</answer>", 0.0),  # empty think
        ("<think>x</think><answer>1</answer>", 0.0),  # no boxed
        ("<think>x</think> text <answer>\\boxed{1}</answer>", 0.0),  # text between
        ("<think>x</think><answer>\\boxed{1}</answer> trailing", 0.0),  # text after
        ("intro <think>x</think><answer>\\boxed{1}</answer>", 0.0),  # text before
        ("<think>x</think><think>y</think><answer>\\boxed{1}</answer>", 0.0),  # two think blocks
        ("<answer>\\boxed{1}</answer><think>x</think>", 0.0),  # wrong order
        ("<think>x</think><answer>\\boxed{1</answer>", 0.0),  # unbalanced boxed
        ("", 0.0),
    ],
)
def test_format_reward(text, expected):
    assert format_reward(text) == expected


def test_composite_reward_is_weighted_sum():
    # correct, 0 tokens, good format: 2 * 1.0 + 1 * 1 = 3
    assert composite_reward(GOOD, 0, True) == pytest.approx(3.0)
    # incorrect, L_max tokens, bad format: 2 * -1.0 + 0 = -2
    assert composite_reward("no tags", 2048, False) == pytest.approx(-2.0)


def test_group_advantages_known_vector():
    # mean 2, Bessel std 1: A = (R - 2) / (1 + 1e-4)
    adv = group_advantages([1.0, 2.0, 3.0])
    np.testing.assert_allclose(adv, np.array([-1, 0, 1]) / (1 + 1e-4))


def test_group_advantages_population_std_option():
    r = [0.0, 2.0]  # population std 1, Bessel std sqrt(2)
    np.testing.assert_allclose(group_advantages(r, AdvantageConfig(bessel=False)), np.array([-1, 1]) / (1 + 1e-4))
    np.testing.assert_allclose(group_advantages(r), np.array([-1, 1]) / (math.sqrt(2) + 1e-4))


def test_equal_rewards_and_single_response_give_zero_advantages():
    assert np.all(group_advantages([2.5] * 8) == 0)
    assert np.all(group_advantages([1.0]) == 0)


def test_keep_group():
    assert keep_group([False, True, False])
    assert not keep_group([False] * 8)


def test_advantage_weights_by_hand():
    # softmax([0, 1] / 0.5) = [1, e^2] / (1 + e^2)
    w = advantage_weights([0.0, 1.0], tau=0.5)
    np.testing.assert_allclose(w, np.array([1, math.e**2]) / (1 + math.e**2))
    assert advantage_weights([5.0] * 4, tau=0.5).tolist() == [0.25] * 4


def test_best_response_ties_shorter_then_lower_index():
    assert best_response([0.5, 1.0, 1.0, 1.0], [10, 30, 20, 20]) == 2
    assert best_response([0.1, -1.0], [100, 1]) == 0


def test_score_group_truncated_response_is_incorrect():
    texts = [GOOD, GOOD, "<think>x</think><answer>\\boxed{8}</answer>"]
    scored = score_group(texts, [10, 2048, 10], ["stop", "length", "stop"], "7", "gsm8k")
    assert scored["correct"] == [True, False, False]
    assert scored["format_ok"] == [True, True, True]
    assert scored["keep"] is True
    assert scored["rewards"][0] == pytest.approx(composite_reward(GOOD, 10, True))
    assert scored["rewards"][1] == pytest.approx(composite_reward(GOOD, 2048, False, truncated=True))
    np.testing.assert_allclose(scored["advantages"], group_advantages(scored["rewards"]))
