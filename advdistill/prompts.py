"""Prompt building, SPEC §2.

The model reasons inside `<think>…</think>`, then answers inside `<answer>…</answer>` with the
final value (or option letter) in `\\boxed{…}`. Base models get k exemplars as earlier chat turns
(k-shot); distilled students get the zero-shot prompt. Multiple-choice questions list their
options as `A. …` to `J. …`.

Records are `advdistill.schema.Record` dicts (SPEC §8); a task's registry entry says whether it
is multiple choice (`advdistill.tasks`).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

# end_of_turn_token_ids lives in a pure module (the training export needs it without pydantic)
from advdistill.end_of_turn import end_of_turn_token_ids  # noqa: F401 - re-exported
from advdistill.tasks import MAX_OPTIONS, OPTION_LETTERS, get_task
from advdistill.template import DEFAULT_SYSTEM_PROMPT, template_response

Message = dict[str, str]


def format_question(question: str, choices: Sequence[str] | None = None) -> str:
    """The user turn: the question, then `A. …` option lines for multiple choice."""
    text = question.strip()
    if choices:
        if len(choices) > MAX_OPTIONS:
            raise ValueError(f"at most {MAX_OPTIONS} options are supported, got {len(choices)}")
        lines = [f"{OPTION_LETTERS[i]}. {str(c).strip()}" for i, c in enumerate(choices)]
        text += "\n\nOptions:\n" + "\n".join(lines)
    return text


# Built-in exemplars (written for this project, in the template). Math ones are GSM8K-like;
# multiple-choice ones use ten options as MMLU-Pro does.
_MATH_EXEMPLARS: list[dict[str, Any]] = [
    {
        "question": "A baker makes 24 muffins and sells 15 of them. How many muffins are left?",
        "response": template_response("The baker starts with 24 muffins.\nAfter selling 15: 24 - 15 = 9.", "9"),
    },
    {
        "question": "Pens cost $3 each. Maria buys 4 pens and a $5 notebook. How much does she spend?",
        "response": template_response("4 pens cost 4 * 3 = 12 dollars.\nWith the notebook: 12 + 5 = 17.", "17"),
    },
    {
        "question": "A train travels 60 miles per hour for 2.5 hours. How far does it go?",
        "response": template_response("Distance = speed * time = 60 * 2.5 = 150 miles.", "150"),
    },
    {
        "question": "Sam has 3 boxes with 12 marbles each. He gives 10 marbles away. How many remain?",
        "response": template_response("3 * 12 = 36 marbles.\n36 - 10 = 26 remain.", "26"),
    },
]

_MC_EXEMPLARS: list[dict[str, Any]] = [
    {
        "question": "Which planet is closest to the Sun?",
        "choices": ["Venus", "Mercury", "Earth", "Mars", "Jupiter", "Saturn", "Uranus", "Neptune", "Pluto", "The Moon"],
        "response": template_response("Mercury orbits nearest to the Sun.", "B"),
    },
    {
        "question": "What is 15% of 200?",
        "choices": ["15", "20", "25", "30", "35", "40", "45", "50", "55", "60"],
        "response": template_response("0.15 * 200 = 30, which is option D.", "D"),
    },
    {
        "question": "Which gas do plants take in for photosynthesis?",
        "choices": ["Oxygen", "Nitrogen", "Hydrogen", "Helium", "Carbon dioxide", "Argon", "Methane", "Ozone", "Neon", "Ammonia"],
        "response": template_response("Photosynthesis fixes carbon dioxide into sugars.", "E"),
    },
    {
        "question": "In economics, what does GDP measure?",
        "choices": [
            "Government debt", "Total population", "Interest rates", "Inflation only",
            "Exports only", "Unemployment", "Money supply", "Tax revenue",
            "Value of final goods and services produced", "Stock prices",
        ],
        "response": template_response("GDP is the market value of final goods and services produced.", "I"),
    },
]


@lru_cache(maxsize=8)
def _load_exemplar_file(path: str) -> tuple[dict[str, Any], ...]:
    rows = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if not row.get("question") or not row.get("response"):
            raise ValueError(f"{path}:{n}: an exemplar needs 'question' and 'response'")
        rows.append(row)
    return tuple(rows)


def exemplars_for(task: str, k: int, path: str | None = None) -> list[dict[str, Any]]:
    """The first k exemplars for a task family (or from a JSONL file of the same fields)."""
    if k <= 0:
        return []
    pool = list(_load_exemplar_file(path)) if path else (
        _MC_EXEMPLARS if get_task(task).multiple_choice else _MATH_EXEMPLARS
    )
    if k > len(pool):
        raise ValueError(f"asked for {k} exemplars but only {len(pool)} are available")
    return pool[:k]


def build_messages(
    record: dict[str, Any],
    *,
    few_shot: int = 0,
    system_prompt: str = DEFAULT_SYSTEM_PROMPT,
    exemplars_path: str | None = None,
) -> list[Message]:
    """Chat messages for a record: system prompt, k exemplar turns, then the question."""
    messages: list[Message] = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    for ex in exemplars_for(record["task"], few_shot, exemplars_path):
        messages.append({"role": "user", "content": format_question(ex["question"], ex.get("choices"))})
        messages.append({"role": "assistant", "content": ex["response"]})
    messages.append({"role": "user", "content": format_question(record["question"], record.get("choices"))})
    return messages


def render_prompt(tokenizer: Any, messages: list[Message]) -> str:
    """Prompt text for a tokenizer: its chat template with the generation prompt appended.

    Tokenizers without a chat template get a plain `role: content` transcript."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    turns = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n\n".join(turns) + "\n\nAssistant:"


def build_prompt(tokenizer: Any, record: dict[str, Any], *, few_shot: int = 0, prompt_cfg: Any = None) -> str:
    """`render_prompt(build_messages(...))` with the settings of a `PromptConfig`."""
    system_prompt = prompt_cfg.system_prompt if prompt_cfg is not None else DEFAULT_SYSTEM_PROMPT
    exemplars_path = prompt_cfg.exemplars_path if prompt_cfg is not None else None
    messages = build_messages(record, few_shot=few_shot, system_prompt=system_prompt, exemplars_path=exemplars_path)
    return render_prompt(tokenizer, messages)

