"""Which config keys exist, and the closest existing key to one that does not: what
`advdistill.config` says when a YAML file or a `--set` names a key wrongly
(`--set train.learning_rate=1e-4` → "train has no field 'learning_rate'; did you mean train.lr?").

It walks the pydantic classes it is given and imports nothing of the project, so the config
module can use it without a cycle. Suggestions come from three places, best first: a key spelled
nearly the same (difflib), a field of the same name in another section (`--set lr=…` →
`train.lr`), and fields whose description says the key's words (`learning_rate` → "AdamW
learning rate" of `train.lr`): another tool's name for the same setting is rarely a typo of ours.
"""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any, Iterator

from pydantic import BaseModel


def _section(annotation: Any) -> type[BaseModel] | None:
    """The config section class a field holds, or None for a value."""
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _is_container(annotation: Any) -> bool:
    """A dict- or list-valued field: keys below it are data (`train.method_lr.sft`), not fields."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_is_container(arg) for arg in typing.get_args(annotation))
    return origin in (dict, list) or annotation in (dict, list)


def fields(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, str]]:
    """(dotted key, description) of every field, sections included."""
    for name, info in model.model_fields.items():
        key = f"{prefix}{name}"
        yield key, info.description or ""
        section = _section(info.annotation)
        if section is not None:
            yield from fields(section, key + ".")


def key_error(root: type[BaseModel], dotted: str) -> str | None:
    """None where `dotted` names a field of `root` (or a key inside a dict- or list-valued field,
    or a key a section says was replaced: its own validator names the replacement); else why not,
    with the closest existing keys."""
    model, walked = root, []
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if part in getattr(model, "replaced", {}):
            return None
        info = model.model_fields.get(part)
        if info is None:
            owner = ".".join(walked)
            where = f"{owner} has no field" if owner else "the config has no top-level field"
            return f"{where} {part!r}{suggestion(root, dotted)}"
        walked.append(part)
        section = _section(info.annotation)
        if section is None:
            if i < len(parts) - 1 and not _is_container(info.annotation):
                return f"{'.'.join(walked)} is a value, not a section"
            return None
        model = section
    return None


def tree_keys(tree: dict[str, Any], prefix: str = "") -> Iterator[str]:
    """The dotted keys of a loaded YAML mapping, down to its leaves."""
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield from tree_keys(value, dotted + ".")
        else:
            yield dotted


def suggestion(root: type[BaseModel], dotted: str) -> str:
    """"; did you mean A?" (or "A or B"), or "" when nothing is close."""
    known = dict(fields(root))
    leaf = dotted.rsplit(".", 1)[-1]
    section = dotted.rsplit(".", 1)[0] + "." if "." in dotted else ""
    found = difflib.get_close_matches(dotted, known, n=2, cutoff=0.8)
    if not found:
        found = [key for key in known if key.rsplit(".", 1)[-1] == leaf]
    if not found:
        found = _described(known, leaf.replace("_", " ").replace("-", " ").lower(), section)
    if not found:
        found = difflib.get_close_matches(dotted, known, n=2, cutoff=0.6)
    return f"; did you mean {' or '.join(found[:2])}?" if found else ""


def _described(known: dict[str, str], words: str, section: str) -> list[str]:
    """Keys whose description contains `words`, those of the same section first, then where the
    words come earliest in the description (a field named for them says them first)."""
    if len(words) < 4:
        return []
    hits = [(not key.startswith(section), text.lower().find(words), key) for key, text in known.items()
            if words in text.lower()]
    return [key for *_, key in sorted(hits)]
