"""Rule-based rewards, SPEC §4 (paper §4.1): R = w_cos · R_cos + w_fmt · R_fmt."""

from __future__ import annotations

import math

from advdistill.config import RewardConfig, SamplingConfig
from advdistill.scoring.extract import last_boxed

# Without an experiment's config: L_max is the default generation limit, as an ExperimentConfig derives it.
_DEFAULT = RewardConfig(max_len=SamplingConfig().max_tokens)
_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def format_reward(text: str) -> float:
    """R_fmt ∈ {0, 1}: 1 iff the response is one non-empty `<think>…</think>` block followed by
    one `<answer>…</answer>` block containing a `\\boxed{…}`, with only whitespace between or
    after them."""
    if not isinstance(text, str):
        return 0.0
    s = text.strip()
    if any(s.count(tag) != 1 for tag in _TAGS):
        return 0.0
    think_open, think_close = s.find("<think>"), s.find("</think>")
    answer_open, answer_close = s.find("<answer>"), s.find("</answer>")
    if think_open != 0 or not (think_open < think_close < answer_open < answer_close):
        return 0.0
    if not s.endswith("</answer>"):
        return 0.0
    if s[think_close + len("</think>") : answer_open].strip():
        return 0.0
    if not s[len("<think>") : think_close].strip():
        return 0.0
    return 1.0 if last_boxed(s[answer_open + len("<answer>") : answer_close]) is not None else 0.0


def cosine_reward(num_tokens: int, correct: bool, truncated: bool = False, cfg: RewardConfig | None = None) -> float:
    """Length-aware reward (Yeo et al. 2025), SPEC §4:

        Lc = min(L, L_max),  c = cos(π · Lc / L_max),  R_cos = r_end + ½ (r_start − r_end)(1 + c)

    so R_cos = r_start at length 0 and r_end at L_max. A truncated response is incorrect with
    Lc = L_max."""
    cfg = cfg or _DEFAULT
    if cfg.max_len is None:
        raise ValueError("reward.max_len is unset: an ExperimentConfig derives it from curate.sampling.max_tokens")
    if truncated:
        correct, length = False, cfg.max_len
    else:
        length = min(max(int(num_tokens), 0), cfg.max_len)
    r_start, r_end = (cfg.correct_start, cfg.correct_end) if correct else (cfg.wrong_start, cfg.wrong_end)
    c = math.cos(math.pi * length / cfg.max_len)
    return r_end + 0.5 * (r_start - r_end) * (1.0 + c)


def composite_reward(
    text: str, num_tokens: int, correct: bool, truncated: bool = False, cfg: RewardConfig | None = None
) -> float:
    """R = w_cos · R_cos + w_fmt · R_fmt (paper: w_cos = 2, w_fmt = 1)."""
    cfg = cfg or _DEFAULT
    return cfg.w_cos * cosine_reward(num_tokens, correct, truncated, cfg) + cfg.w_fmt * format_reward(text)
