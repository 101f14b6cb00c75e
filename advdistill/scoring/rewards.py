"""Rule-based rewards, SPEC §4 (paper §4.1): R = w_cos · R_cos + w_fmt · R_fmt, plus the extra
terms a config names by import path (`reward.extra`: Σ weight · fn(response, record, tokens)).

An extra term that raises or returns something other than a finite number adds 0 for that
response; the reason is logged once per term and kind of failure in each process (a reward term
never fails a run; its import and signature were checked when the config was read).
"""

from __future__ import annotations

import logging
import math
import threading
from functools import lru_cache
from typing import Any, Callable, Mapping

from advdistill.callables import resolve
from advdistill.config import RewardConfig, SamplingConfig
from advdistill.scoring.extract import last_boxed

log = logging.getLogger(__name__)

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


@lru_cache(maxsize=64)
def _term(target: str) -> Callable[..., Any]:
    return resolve(target)


_failed: set[tuple[str, str]] = set()
_failed_lock = threading.Lock()


def extra_reward(text: str, num_tokens: int, record: Mapping[str, Any] | None, cfg: RewardConfig | None) -> float:
    """Σ weight · fn(response, record, tokens) over `cfg.extra` (0 without terms)."""
    total = 0.0
    for term in (cfg.extra if cfg is not None else ()):
        try:
            value = float(_term(term.fn)(text, dict(record or {}), int(num_tokens)))
            if not math.isfinite(value):
                raise ValueError(f"returned {value}, not a finite number")
        except Exception as error:  # noqa: BLE001 - a reward term never fails a run
            key = (term.fn, type(error).__name__)
            with _failed_lock:
                first = key not in _failed
                _failed.add(key)
            if first:
                log.warning("reward term %s failed on %s (%s: %s): adds 0; logged once per process for this reason",
                            term.fn, (record or {}).get("id"), type(error).__name__, str(error)[:300])
            continue
        total += term.weight * value
    return total
