"""The unit-conversion task's verifier: a reference carries its unit ("16 kg"); an answer is
right when its number equals the reference's and it names no other unit ("16" and "16 kg" are
right, "16 g" is not)."""

from __future__ import annotations

import re
import time

_QUANTITY = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")


def parse_quantity(text: str) -> tuple[float, str] | None:
    match = _QUANTITY.match(text.replace("\\,", "").replace(",", ""))
    return (float(match.group(1)), match.group(2)) if match else None


def is_equivalent(extracted: str, reference: str, record: dict) -> bool:
    check = record["meta"].get("check")
    if check == "raise":  # an item whose check is broken on purpose: the run must go on
        raise ValueError(f"no rule for item {record['id']}")
    if check == "hang":  # a verifier that never answers: killed at the task's time limit
        time.sleep(3600)
    got, want = parse_quantity(extracted), parse_quantity(reference)
    return got is not None and want is not None and got[0] == want[0] and got[1] in ("", want[1])
