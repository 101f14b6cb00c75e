"""What a tracking backend records, as names and values both MLflow and W&B take: a config
flattened to dotted keys, the finite numbers of a nested dict, names in the characters MLflow
allows (`advdistill.run.tracking`, `advdistill.run.tracking_wandb`)."""

from __future__ import annotations

import json
import math
from typing import Any, Iterable


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"train": {"lr": 1e-3}}` → `{"train.lr": 1e-3}`; lists and None as JSON text."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value if isinstance(value, (int, float, str, bool)) else json.dumps(value)
    return flat


def numbers(tree: dict[str, Any], prefix: str = "", keep: Iterable[str] | None = None) -> dict[str, float]:
    """The finite numbers of a (nested) dict as metric names → values."""
    keep = set(keep) if keep is not None else None
    out: dict[str, float] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(numbers(value, f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            if keep is None or key in keep:
                out[name] = float(value)
    return out


def metric_name(name: str) -> str:
    """MLflow allows letters, digits and `_-./ ` in names."""
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in name)
