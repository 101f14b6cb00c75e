"""The synthetic reasoning task: GSM8K-like arithmetic word problems a CPU model can learn.

A problem starts with a quantity and applies 1–3 operations (buy/give/double/split…); the
reference solution reasons line by line inside `<think>` and boxes the result inside `<answer>`.

Splits are disjoint by construction: every problem's *arithmetic skeleton* (start value and
operations) hashes into a bucket range of its split, so no test or OOD computation — let alone a
question — ever appears in train, whatever the split sizes. The `ood` split mirrors the GSM-PLUS
perturbations that fit the task, each record tagged with its `perturbation_type`.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any

from advdistill.prompts import template_response

SPLITS = ("train", "test", "ood")
PERTURBATIONS = (
    "numerical substitution",
    "digit expansion",
    "distraction insertion",
    "adding operation",
    "reversing operation",
)
# Bucket ranges (of 100) that a skeleton must hash into for each split.
_BUCKETS = {"train": range(0, 80), "test": range(80, 90), "ood": range(90, 100)}

NAMES = (
    "Tom", "Anna", "Ben", "Lily", "Sam", "Mia", "Jack", "Emma", "Leo", "Zoe", "Max", "Ava", "Noah",
    "Ella", "Omar", "Sara", "Ravi", "Nina", "Liam", "Ruby", "Owen", "Ivy", "Eli", "Rosa",
)
PRONOUNS = {
    "Tom": "he", "Ben": "he", "Sam": "he", "Jack": "he", "Leo": "he", "Max": "he", "Noah": "he",
    "Omar": "he", "Ravi": "he", "Liam": "he", "Owen": "he", "Eli": "he",
}
OBJECTS = (
    "apples", "stickers", "marbles", "books", "cards", "pencils", "shells", "coins", "cookies",
    "stamps", "balloons", "candies", "flowers", "toys", "buttons", "eggs", "beads", "rocks",
)


@dataclass(frozen=True)
class Op:
    """One operation: how the question says it, how the solution explains it, what it computes."""

    kind: str  # add, sub, mul, div
    operand: int

    def apply(self, value: int) -> int:
        return {
            "add": value + self.operand,
            "sub": value - self.operand,
            "mul": value * self.operand,
            "div": value // self.operand,
        }[self.kind]

    def symbol(self) -> str:
        return {"add": "+", "sub": "-", "mul": "*", "div": "/"}[self.kind]


_ADD = ("buys {b} more", "finds {b} more", "gets {b} more", "is given {b} more", "picks up {b} more")
_SUB = ("gives away {b}", "sells {b}", "loses {b}", "eats {b}", "uses {b}")
_MUL = {2: ("doubles them",), 3: ("triples them",)}
_MUL_ANY = ("ends up with {b} times as many",)
_DIV = ("splits them into {b} equal piles and keeps one pile",)


def _phrase(op: Op, rng: random.Random) -> str:
    if op.kind == "add":
        return rng.choice(_ADD).format(b=op.operand)
    if op.kind == "sub":
        return rng.choice(_SUB).format(b=op.operand)
    if op.kind == "mul":
        return rng.choice(_MUL.get(op.operand, ()) + _MUL_ANY).format(b=op.operand)
    return rng.choice(_DIV).format(b=op.operand)


@dataclass(frozen=True)
class Difficulty:
    """Number ranges; `digit expansion` multiplies them by ten."""

    max_start: int = 40
    max_add: int = 30
    max_value: int = 200
    max_ops: int = 3


def _random_ops(start: int, n_ops: int, rng: random.Random, d: Difficulty, scale: int = 1) -> list[Op] | None:
    ops, value = [], start
    for _ in range(n_ops):
        choices = ["add", "sub"] * 3 + ["mul", "div"]
        kind = rng.choice(choices)
        if kind == "add":
            op = Op("add", rng.randint(1, d.max_add) * scale)
        elif kind == "sub":
            if value < 2:
                return None
            op = Op("sub", rng.randint(1, value - 1))
        elif kind == "mul":
            if value * 2 > d.max_value * scale:
                return None
            op = Op("mul", rng.choice([2, 3]) if value * 3 <= d.max_value * scale else 2)
        else:
            divisors = [b for b in (2, 3, 4, 5) if value % b == 0 and value // b >= 1]
            if not divisors:
                return None
            op = Op("div", rng.choice(divisors))
        value = op.apply(value)
        if value > d.max_value * scale or value < 0:
            return None
        ops.append(op)
    return ops


def _bucket(skeleton: tuple) -> int:
    return int(hashlib.sha1(repr(skeleton).encode()).hexdigest()[:8], 16) % 100


def _solution_lines(name: str, obj: str, start: int, ops: list[Op]) -> list[str]:
    lines, value = [f"{name} starts with {start} {obj}."], start
    for op in ops:
        new = op.apply(value)
        lines.append(f"{value} {op.symbol()} {op.operand} = {new}.")
        value = new
    return lines


def _forward_problem(rng: random.Random, start: int, ops: list[Op], distraction: bool = False) -> tuple[str, str, int]:
    name = rng.choice(NAMES)
    obj = rng.choice(OBJECTS)
    pronoun = PRONOUNS.get(name, "she")
    sentences = [f"{name} has {start} {obj}."]
    for i, op in enumerate(ops):
        lead = pronoun.capitalize() if i == 0 else f"Then {pronoun}"
        sentences.append(f"{lead} {_phrase(op, rng)}.")
    if distraction:
        other = rng.choice([n for n in NAMES if n != name])
        other_obj = rng.choice([o for o in OBJECTS if o != obj])
        sentences.insert(rng.randint(1, len(sentences)), f"{other} has {rng.randint(2, 60)} {other_obj}.")
    sentences.append(f"How many {obj} does {name} have now?")
    value = start
    for op in ops:
        value = op.apply(value)
    reasoning = "\n".join(_solution_lines(name, obj, start, ops))
    return " ".join(sentences), template_response(reasoning, str(value)), value


def _reversed_problem(rng: random.Random, start: int, ops: list[Op]) -> tuple[str, str, int]:
    """`X had some; after the operations X has N. How many at first?` Solved by undoing them."""
    name = rng.choice(NAMES)
    obj = rng.choice(OBJECTS)
    pronoun = PRONOUNS.get(name, "she")
    end = start
    for op in ops:
        end = op.apply(end)
    steps = " and then ".join(_phrase(op, rng) for op in ops)
    question = (
        f"{name} had some {obj}. {pronoun.capitalize()} {steps}. Now {pronoun} has {end} {obj}. "
        f"How many {obj} did {name} have at first?"
    )
    inverse = {"add": "-", "sub": "+", "mul": "/", "div": "*"}
    lines, value = [f"{name} ends with {end} {obj}."], end
    for op in reversed(ops):
        prev = Op({"-": "sub", "+": "add", "/": "div", "*": "mul"}[inverse[op.kind]], op.operand).apply(value)
        lines.append(f"{value} {inverse[op.kind]} {op.operand} = {prev}.")
        value = prev
    return question, template_response("\n".join(lines), str(start)), start


def _skeleton(start: int, ops: list[Op], tag: str = "") -> tuple:
    return (tag, start, tuple((op.kind, op.operand) for op in ops))


def _sample(rng: random.Random, d: Difficulty, split: str, n_ops: int, scale: int = 1, tag: str = "") -> tuple[int, list[Op]]:
    """Draw (start, ops) until the skeleton hashes into the split's buckets."""
    while True:
        start = rng.randint(2, d.max_start) * scale
        ops = _random_ops(start, n_ops, rng, d, scale)
        if ops is not None and _bucket(_skeleton(start, ops, tag)) in _BUCKETS[split]:
            return start, ops


def _record(split: str, seed: int, index: int, question: str, solution: str, answer: int, **meta: Any) -> dict[str, Any]:
    return {
        "id": f"synthetic-{split}-{seed}-{index:06d}",
        "task": "synthetic",
        "question": question,
        "reference": str(answer),
        "choices": None,
        "meta": {"solution": solution, "perturbation_type": meta.get("perturbation_type"), "num_ops": meta["num_ops"]},
    }


def _ood_item(rng: random.Random, d: Difficulty, kind: str) -> tuple[str, str, int, int]:
    if kind == "numerical substitution":
        n_ops = rng.randint(1, d.max_ops)
        start, ops = _sample(rng, d, "ood", n_ops)
        return (*_forward_problem(rng, start, ops), n_ops)
    if kind == "digit expansion":
        n_ops = rng.randint(1, d.max_ops)
        start, ops = _sample(rng, d, "ood", n_ops, scale=10, tag="x10")
        return (*_forward_problem(rng, start, ops), n_ops)
    if kind == "distraction insertion":
        n_ops = rng.randint(1, d.max_ops)
        start, ops = _sample(rng, d, "ood", n_ops)
        return (*_forward_problem(rng, start, ops, distraction=True), n_ops)
    if kind == "adding operation":
        n_ops = d.max_ops + 1
        start, ops = _sample(rng, d, "ood", n_ops)
        return (*_forward_problem(rng, start, ops), n_ops)
    n_ops = rng.randint(1, 2)
    start, ops = _sample(rng, d, "ood", n_ops, tag="reversed")
    return (*_reversed_problem(rng, start, ops), n_ops)


def make_split(split: str, n: int, seed: int = 0, difficulty: Difficulty | None = None) -> list[dict[str, Any]]:
    """`n` SPEC §8 records of a split (`train`, `test` or `ood`); the first n of a larger call are
    the same records (ids are stable: `synthetic-{split}-{seed}-{index}`)."""
    if split not in SPLITS:
        raise ValueError(f"unknown synthetic split {split!r}; expected one of {SPLITS}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    d = difficulty or Difficulty()
    rng = random.Random(f"synthetic/{split}/{seed}")
    records = []
    for index in range(n):
        if split == "ood":
            kind = PERTURBATIONS[index % len(PERTURBATIONS)]
            question, solution, answer, n_ops = _ood_item(rng, d, kind)
            records.append(_record(split, seed, index, question, solution, answer, perturbation_type=kind, num_ops=n_ops))
        else:
            n_ops = rng.randint(1, d.max_ops)
            start, ops = _sample(rng, d, split, n_ops)
            question, solution, answer = _forward_problem(rng, start, ops)
            records.append(_record(split, seed, index, question, solution, answer, num_ops=n_ops))
    return records


def arithmetic_drills(n: int, seed: int = 0, difficulty: Difficulty | None = None) -> list[tuple[str, str]]:
    """(question, response) pairs of bare operations on the train skeleton distribution: extra
    practice for the tiny models' arithmetic (used by `build_tiny_models`, not a dataset)."""
    d = difficulty or Difficulty()
    rng = random.Random(f"synthetic/drills/{seed}")
    out = []
    while len(out) < n:
        start, ops = _sample(rng, d, "train", 1)
        op, value = ops[0], ops[0].apply(start)
        out.append((f"What is {start} {op.symbol()} {op.operand}?", template_response(f"{start} {op.symbol()} {op.operand} = {value}.", str(value))))
    return out

