"""The template the models are asked to follow (SPEC §2), as text: the default system prompt and
the shape of a response — reasoning inside `<think>…</think>`, then the result boxed inside
`<answer>…</answer>`.

A leaf: it imports nothing of the project, so the config (the system prompt's default), the
prompt builder (its exemplars) and the synthetic task (its reference solutions) all import it.
"""

from __future__ import annotations

DEFAULT_SYSTEM_PROMPT = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant "
    "solves it. The Assistant first thinks about the reasoning process and then gives the "
    "answer. The reasoning is enclosed in <think> </think> tags and the answer in "
    "<answer> </answer> tags, with the final result in \\boxed{}, i.e., "
    "<think> reasoning here </think> <answer> \\boxed{result} </answer>."
)


def template_response(reasoning: str, answer: str) -> str:
    """A response in the SPEC template: reasoning in <think>, the result boxed in <answer>."""
    return f"<think>\n{reasoning.strip()}\n</think>\n<answer>\n\\boxed{{{answer}}}\n</answer>"
