"""Group-relative advantages, filtering and weights, SPEC §5 (paper §4.1.1, §4.2.1)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from advdistill.config import AdvantageConfig, RewardConfig
from advdistill.schema import TRUNCATED
from advdistill.scoring.rewards import composite_reward, extra_reward, format_reward
from advdistill.scoring.verify import judge


def group_advantages(rewards: Sequence[float], cfg: AdvantageConfig | None = None) -> np.ndarray:
    """A_i = (R_i − mean(R)) / (std(R) + ε) over one prompt's responses.

    std uses Bessel's correction (as TRL's GRPO) unless `cfg.bessel` is off. Equal rewards, or a
    single response, give all-zero advantages."""
    cfg = cfg or AdvantageConfig()
    r = np.asarray(rewards, dtype=np.float64)
    if r.size == 0:
        return r
    centred = r - r.mean()
    if r.size == 1:
        return np.zeros_like(r)
    std = r.std(ddof=1 if cfg.bessel else 0)
    return centred / (std + cfg.eps)


def keep_group(correct: Sequence[bool]) -> bool:
    """A group is kept iff at least one response is correct."""
    return bool(np.any(np.asarray(correct, dtype=bool)))


def advantage_weights(advantages: Sequence[float], tau: float) -> np.ndarray:
    """w_i = softmax(A / τ)_i over the group (lower τ favours high-advantage responses)."""
    z = np.asarray(advantages, dtype=np.float64) / tau
    z = z - z.max()
    e = np.exp(z)
    return e / e.sum()


def score_group(
    responses: Sequence[str],
    token_lengths: Sequence[int],
    finish_reasons: Sequence[str | None],
    reference: str | None,
    task: str,
    reward_cfg: RewardConfig | None = None,
    advantage_cfg: AdvantageConfig | None = None,
    record: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Score one prompt's K responses: correctness, format, composite reward (with the config's
    extra terms, `reward.extra`), advantages, keep. `record` is the item (SPEC §8 fields), which
    a task's own verifier and the extra reward terms get.

    A response truncated at the token limit is incorrect whatever it says (`judge`)."""
    truncated = [reason == TRUNCATED for reason in finish_reasons]
    correct = [judge(text, reason, reference, task, record).correct for text, reason in zip(responses, finish_reasons)]
    format_ok = [format_reward(text) == 1.0 for text in responses]
    rewards = [
        composite_reward(text, n, ok, cut, reward_cfg) + extra_reward(text, n, record, reward_cfg)
        for text, n, ok, cut in zip(responses, token_lengths, correct, truncated)
    ]
    advantages = group_advantages(rewards, advantage_cfg)
    return {
        "correct": correct,
        "format_ok": format_ok,
        "rewards": rewards,
        "advantages": advantages.tolist(),
        "keep": keep_group(correct),
    }
