"""The tokens that end a model's turn (SPEC §3), read from its tokenizer alone.

Apart from `advdistill.prompts` (which needs the task registry and so pydantic) because the
training export (`advdistill.train.checkpointing`) writes these stops into the exported
generation config, and that export must run where only torch and transformers are installed
(`bench/gpu_slot.sh` on a lent GPU)."""

from __future__ import annotations

from typing import Any


# A plain-text probe no chat template rewrites: whatever the template puts right after it closes
# the assistant's turn.
_TURN_PROBE = "advdistill end-of-turn probe 7f3c"


def _is_special(tokenizer: Any, token_id: int) -> bool:
    if token_id in set(getattr(tokenizer, "all_special_ids", None) or ()):
        return True
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    token = added.get(token_id)
    return bool(getattr(token, "special", False))


def _template_end_of_turn_id(tokenizer: Any) -> int | None:
    """The special token the chat template writes right after an assistant's content, or None."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    messages = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": _TURN_PROBE}]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception:  # a template that cannot render this exchange: fall back to EOS
        return None
    at = text.rfind(_TURN_PROBE)
    if at < 0:
        return None
    # Some templates put a newline between the content and the end-of-turn token.
    rest = text[at + len(_TURN_PROBE) :].lstrip()
    ids = tokenizer(rest, add_special_tokens=False)["input_ids"] if rest else []
    if not ids or not _is_special(tokenizer, ids[0]):
        return None
    return int(ids[0])


def end_of_turn_token_ids(tokenizer: Any) -> tuple[int, ...]:
    """Token ids that end the model's turn (SPEC §3): the chat template's end-of-turn token first
    (`<|im_end|>` for Qwen2.5), then the tokenizer's EOS where it differs.

    Generation stops at any of them (Qwen2.5 *base* models' EOS is `<|endoftext|>`, so a k-shot
    base model stopping only at EOS writes on into invented turns), and training appends the
    first one after every response the teacher ended, so a student stops where evaluation
    expects. Without a chat template (or a special token closing its turns) this is the EOS alone."""
    ids = [_template_end_of_turn_id(tokenizer), getattr(tokenizer, "eos_token_id", None)]
    return tuple(dict.fromkeys(int(i) for i in ids if i is not None))
