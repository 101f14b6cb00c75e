"""The synthetic reasoning task: GSM8K-like arithmetic word problems a CPU model can learn.

A problem starts with a quantity and applies 1–3 operations (buy/give/double/split…). Its
reference solution reasons inside `<think>` one sentence at a time — it restates each sentence of
the question, then computes — and boxes the result inside `<answer>`:

    Omar has 4 cookies. He finds 5 more. Then he loses 6. How many cookies does Omar have now?

    <think>
    Omar has 4 cookies.
    He finds 5 more: 4 + 5 = 9.
    Then he loses 6: 9 - 6 = 3.
    </think>
    <answer>
    \\boxed{3}
    </answer>

Restating makes every operand local to the line that uses it, which is what lets a model of a
million parameters solve multi-step problems; the `terse` style (computations only, operands
fetched from the question) is the harder way to reason, used to build the student base.

What is disjoint, exactly: a problem's *arithmetic skeleton* (its start value and its sequence of
operations, e.g. `4+5-6`) hashes into a bucket range of its split, so no val, test or OOD skeleton —
and so no question — appears in train, whatever the split sizes. Single steps are shared: the
step equations (`4 + 5 = 9`) recur across skeletons, and 97.8% of the first 1,000 test items
(97.9% of val, 76.4% of OOD) consist only of step equations that the embedded models' build
corpus contains; what a held-out item tests is composing seen steps into an unseen computation
(OOD: also unseen numbers and forms). `val` is for choosing hyperparameters (never test or OOD).
The `ood` split mirrors the GSM-PLUS perturbations that fit the task, each record tagged with its
`perturbation_type`.

`curate` is the prompts the demo's teacher answers: train-range problems of 2–3 operations whose
skeletons are not in the embedded models' build corpus (`build_skeletons`: the first 40,000 train
problems and the 20,000 drills of `tools/build_tiny_models.py`), so neither model has read any
curation problem or its computation with a gold solution. Every one-operation skeleton of the
train range is in that corpus, hence no one-step curation problems; 95.5% of the first 640
curation items still consist only of seen step equations (single steps are not held out).
"""

from __future__ import annotations

import functools
import hashlib
import random
from dataclasses import dataclass
from typing import Any, Literal

from advdistill.template import template_response

SPLITS = ("train", "curate", "val", "test", "ood")
PERTURBATIONS = (
    "numerical substitution",
    "digit expansion",
    "distraction insertion",
    "adding operation",
    "reversing operation",
)
# Bucket ranges (of 100) that a skeleton must hash into for each split.
# `curate` draws from the train range too, minus every skeleton of the build corpus (below).
_BUCKETS = {"train": range(0, 75), "curate": range(0, 75), "val": range(75, 80), "test": range(80, 90),
            "ood": range(90, 100)}
# The build corpus of the embedded models (`tools/build_tiny_models.py`'s defaults): the first
# BUILD_TRAIN_PROBLEMS problems of the train split (seed 0) and BUILD_DRILLS arithmetic drills.
BUILD_TRAIN_PROBLEMS = 40_000
BUILD_DRILLS = 20_000

Style = Literal["restate", "terse"]

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
    """One operation: what it computes and how a sentence says it."""

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

    def inverse(self) -> "Op":
        return Op({"add": "sub", "sub": "add", "mul": "div", "div": "mul"}[self.kind], self.operand)


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

    max_start: int = 30
    max_add: int = 20
    max_value: int = 100
    max_ops: int = 3


def _random_ops(start: int, n_ops: int, rng: random.Random, d: Difficulty, scale: int = 1) -> list[Op] | None:
    ops, value = [], start
    for _ in range(n_ops):
        kind = rng.choice(["add", "sub"] * 3 + ["mul", "div"])
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


def _skeleton(start: int, ops: list[Op], tag: str = "") -> tuple:
    return (tag, start, tuple((op.kind, op.operand) for op in ops))


def skeleton_id(skeleton: tuple) -> str:
    """A skeleton as text, one to one: `12+5-3`, `x10:120*2`, `reversed:14/2` (the start, then each
    operation; the tag of an OOD variant drawn from its own skeleton space before a colon)."""
    tag, start, ops = skeleton
    symbols = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
    return f"{tag + ':' if tag else ''}{start}" + "".join(f"{symbols[kind]}{operand}" for kind, operand in ops)


def _sample(rng: random.Random, d: Difficulty, split: str, n_ops: int, scale: int = 1, tag: str = "") -> tuple[int, list[Op]]:
    """Draw (start, ops) until the skeleton hashes into the split's buckets."""
    while True:
        start = rng.randint(2, d.max_start) * scale
        ops = _random_ops(start, n_ops, rng, d, scale)
        if ops is not None and _bucket(_skeleton(start, ops, tag)) in _BUCKETS[split]:
            return start, ops


def _line(a: int, op: Op, b: int) -> str:
    return f"{a} {op.symbol()} {op.operand} = {b}."


@dataclass(frozen=True)
class Problem:
    """One word problem: its wording is drawn once; question and solutions are rendered from it
    without further randomness, so every style of a record describes the same problem."""

    name: str
    obj: str
    start: int
    ops: tuple[Op, ...]
    phrases: tuple[str, ...]  # one verb phrase per op
    reversed: bool = False  # "had some …, now has N; how many at first?"
    distraction: tuple[int, str] | None = None  # (sentence index, sentence) about someone else
    tag: str = ""  # the skeleton space it was drawn from (`_sample`'s tag); wording never reads it

    @classmethod
    def draw(cls, rng: random.Random, start: int, ops: list[Op], *, reversed: bool = False,
             distraction: bool = False, tag: str = "") -> "Problem":
        name, obj = rng.choice(NAMES), rng.choice(OBJECTS)
        phrases = tuple(_phrase(op, rng) for op in ops)
        extra = None
        if distraction:
            other = rng.choice([n for n in NAMES if n != name])
            other_obj = rng.choice([o for o in OBJECTS if o != obj])
            extra = (rng.randint(1, len(ops) + 1), f"{other} has {rng.randint(2, 60)} {other_obj}.")
        return cls(name, obj, start, tuple(ops), phrases, reversed, extra, tag)

    @property
    def skeleton(self) -> tuple:
        """The arithmetic skeleton (tag, start, operations) whose hash put it in its split."""
        return _skeleton(self.start, list(self.ops), self.tag)

    @property
    def pronoun(self) -> str:
        return PRONOUNS.get(self.name, "she")

    @property
    def answer(self) -> int:
        if self.reversed:
            return self.start
        value = self.start
        for op in self.ops:
            value = op.apply(value)
        return value

    def _end(self) -> int:
        value = self.start
        for op in self.ops:
            value = op.apply(value)
        return value

    def _op_sentences(self) -> list[str]:
        return [f"{self.pronoun.capitalize() if i == 0 else 'Then ' + self.pronoun} {phrase}"
                for i, phrase in enumerate(self.phrases)]

    def question(self) -> str:
        if self.reversed:
            steps = " and then ".join(self.phrases)
            p = self.pronoun
            return (f"{self.name} had some {self.obj}. {p.capitalize()} {steps}. Now {p} has {self._end()} "
                    f"{self.obj}. How many {self.obj} did {self.name} have at first?")
        sentences = [f"{self.name} has {self.start} {self.obj}."] + [s + "." for s in self._op_sentences()]
        if self.distraction is not None:
            index, text = self.distraction
            sentences.insert(index, text)
        sentences.append(f"How many {self.obj} does {self.name} have now?")
        return " ".join(sentences)

    def solution(self, style: Style = "restate") -> str:
        """The reference response in the SPEC template (a distraction is never restated)."""
        if self.reversed:
            return template_response("\n".join(self._reversed_lines(style)), str(self.answer))
        value = self.start
        lines = [f"{self.name} has {self.start} {self.obj}." if style == "restate"
                 else f"{self.name} starts with {self.start} {self.obj}."]
        for op, sentence in zip(self.ops, self._op_sentences()):
            new = op.apply(value)
            lines.append(f"{sentence}: {_line(value, op, new)}" if style == "restate" else _line(value, op, new))
            value = new
        return template_response("\n".join(lines), str(value))

    def _reversed_lines(self, style: Style) -> list[str]:
        value = self._end()
        lines = [f"Now {self.pronoun} has {value} {self.obj}." if style == "restate"
                 else f"{self.name} ends with {value} {self.obj}."]
        for op, phrase in zip(reversed(self.ops), reversed(self.phrases)):
            undo = op.inverse()
            prev = undo.apply(value)
            lines.append(f"Before {self.pronoun} {phrase}: {_line(value, undo, prev)}" if style == "restate"
                         else _line(value, undo, prev))
            value = prev
        return lines


def _record(split: str, seed: int, index: int, problem: Problem, style: Style, **meta: Any) -> dict[str, Any]:
    return {
        "id": f"synthetic-{split}-{seed}-{index:06d}",
        "task": "synthetic",
        "question": problem.question(),
        "reference": str(problem.answer),
        "choices": None,
        # `skeleton`: items sharing one are related (the same computation), a cluster for intervals
        # (advdistill.tasks.record_cluster).
        "meta": {"solution": problem.solution(style), "perturbation_type": meta.get("perturbation_type"),
                 "num_ops": len(problem.ops), "skeleton": skeleton_id(problem.skeleton)},
    }


def _ood_problem(rng: random.Random, d: Difficulty, kind: str) -> Problem:
    if kind == "numerical substitution":
        start, ops = _sample(rng, d, "ood", rng.randint(1, d.max_ops))
        return Problem.draw(rng, start, ops)
    if kind == "digit expansion":
        start, ops = _sample(rng, d, "ood", rng.randint(1, d.max_ops), scale=10, tag="x10")
        return Problem.draw(rng, start, ops, tag="x10")
    if kind == "distraction insertion":
        start, ops = _sample(rng, d, "ood", rng.randint(1, d.max_ops))
        return Problem.draw(rng, start, ops, distraction=True)
    if kind == "adding operation":
        start, ops = _sample(rng, d, "ood", d.max_ops + 1)
        return Problem.draw(rng, start, ops)
    start, ops = _sample(rng, d, "ood", rng.randint(1, 2), tag="reversed")
    return Problem.draw(rng, start, ops, reversed=True, tag="reversed")


def make_split(split: str, n: int, seed: int = 0, difficulty: Difficulty | None = None,
               style: Style = "restate") -> list[dict[str, Any]]:
    """`n` SPEC §8 records of a split (`train`, `curate`, `val`, `test` or `ood`); the first n of a larger
    call are the same records (ids are stable: `synthetic-{split}-{seed}-{index}`), and `style`
    changes only the reference solution's wording, never the problems."""
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
            records.append(_record(split, seed, index, _ood_problem(rng, d, kind), style, perturbation_type=kind))
        elif split == "curate":
            records.append(_record(split, seed, index, _curate_problem(rng, d), style))
        else:
            start, ops = _sample(rng, d, split, rng.randint(1, d.max_ops))
            records.append(_record(split, seed, index, Problem.draw(rng, start, ops), style))
    return records


def _drill_steps(n: int, seed: int, d: Difficulty) -> list[tuple[int, Op]]:
    rng = random.Random(f"synthetic/drills/{seed}")
    return [(start, ops[0]) for start, ops in (_sample(rng, d, "train", 1) for _ in range(n))]


def arithmetic_drills(n: int, seed: int = 0, difficulty: Difficulty | None = None) -> list[tuple[str, str]]:
    """(question, response) pairs of bare operations on the train skeleton distribution: extra
    practice for the tiny models' arithmetic (used by `tools/build_tiny_models.py`, not a dataset)."""
    out = []
    for start, op in _drill_steps(n, seed, difficulty or Difficulty()):
        value = op.apply(start)
        out.append((f"What is {start} {op.symbol()} {op.operand}?", template_response(_line(start, op, value), str(value))))
    return out


@functools.lru_cache(maxsize=4)
def build_skeletons(train_problems: int = BUILD_TRAIN_PROBLEMS, drills: int = BUILD_DRILLS) -> frozenset[tuple]:
    """Every arithmetic skeleton the embedded models were built on (`tools/build_tiny_models.py`
    with its defaults): those of the first `train_problems` train problems (seed 0) and of the
    `drills` arithmetic drills (one operation each). The `curate` split draws none of them."""
    d = Difficulty()
    rng = random.Random("synthetic/train/0")
    seen = set()
    for _ in range(train_problems):  # make_split("train", ...)'s draws, without rendering any text
        start, ops = _sample(rng, d, "train", rng.randint(1, d.max_ops))
        Problem.draw(rng, start, ops)
        seen.add(_skeleton(start, ops))
    seen.update(_skeleton(start, [op]) for start, op in _drill_steps(drills, 0, d))
    return frozenset(seen)


def _curate_problem(rng: random.Random, d: Difficulty) -> Problem:
    """A train-range problem of 2 to `max_ops` operations whose skeleton the builds never saw (every
    one-operation skeleton of the train range is in the build corpus: 829 of them, all drawn)."""
    if d.max_ops < 2:
        raise ValueError("the curate split needs problems of at least 2 operations (Difficulty.max_ops >= 2)")
    built = build_skeletons()
    n_ops = rng.randint(2, d.max_ops)
    while True:
        start, ops = _sample(rng, d, "train", n_ops)
        if _skeleton(start, ops) not in built:
            return Problem.draw(rng, start, ops)
