"""A second embedded task, where an error can arise in setting a problem up (issue 28.4; the test it
serves is pre-registered in bench/preregistration.md).

People's counts are defined by relations to each other; one count is given, and the question asks
for the last person of the chain:

    Ben has 4 more stamps than Ava. Cara has twice as many stamps as Ben. Ava has 6 stamps.
    How many stamps does Cara have?

    <think>
    We know Ava has 6 stamps.
    Ben has 4 more than Ava: 6 + 4 = 10.
    Then Cara has 10 * 2 = 20 stamps.
    </think>
    <answer>
    \\boxed{20}
    </answer>

Solving it is setting it up: finding the given count, following the chain by name, reading each
relation in the right direction (`Ava has 4 fewer stamps than Ben` defines Ben from Ava), leaving
out what the question does not need — then the same arithmetic as the synthetic task. Every line
of a reference solution takes one of several phrasings at random (3 for the given count, 4 for a
step), so two correct solutions of one problem are rarely copies of each other, unlike the
synthetic task's restating ones.

The variants, a fixed list from easy to hard (bench/preregistration.md uses the first that passes
its gates, measured on the teacher only); each is its own registered task:

    relations_v1   sentences in the order of the chain, each relation said from the side of the
                   person it defines ("Ben has 4 more stamps than Ava")
    relations_v2   sentences shuffled, each relation said from either side ("Ava has 4 fewer
                   stamps than Ben" defines Ben just as well)
    relations_v3   as v2, and half of the problems add a distractor: a person related to someone
                   in the chain whom the question does not need

Splits, by the hash of a problem's arithmetic skeleton (the given count and the operations along
the chain, as in `advdistill.data.synthetic`): `train` (the models' build corpus), `curate` (the
prompts the teacher answers in the experiment: skeletons never in train), `val`, `test` and `ood`
(one relation more than any other split: 4 instead of 2–3). No skeleton is in two splits, and
`curate`, `val`, `test` and `ood` hold at most one item per skeleton (their items are
independent draws; a cluster is an item). Single step equations (`6 + 4 = 10`) do recur across
splits, as in the synthetic task.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from advdistill.data.synthetic import NAMES, OBJECTS, Difficulty, Op, _bucket, _line, _random_ops, _skeleton, skeleton_id
from advdistill.template import template_response

VARIANTS = ("relations_v1", "relations_v2", "relations_v3")  # easy to hard, in the pre-registered order
SPLITS = ("train", "curate", "val", "test", "ood")
# Bucket ranges (of 100) of a skeleton's hash per split.
_BUCKETS = {"train": range(0, 60), "curate": range(60, 75), "val": range(75, 80), "test": range(80, 90),
            "ood": range(90, 100)}
_UNIQUE = ("curate", "val", "test", "ood")  # splits with at most one item per skeleton
_TAG = "relations"  # the skeleton space, apart from the synthetic task's
RELATIONS = {"train": (2, 3), "curate": (2, 3), "val": (2, 3), "test": (2, 3), "ood": (4, 4)}


@dataclass(frozen=True)
class Variant:
    shuffled: bool  # sentences in random order (else the order of the chain)
    either_side: bool  # a relation may be said from the side of the person it defines or the other
    distractor: float  # probability of a sentence about a person the question does not need


VARIANT_FEATURES = {
    "relations_v1": Variant(shuffled=False, either_side=False, distractor=0.0),
    "relations_v2": Variant(shuffled=True, either_side=True, distractor=0.0),
    "relations_v3": Variant(shuffled=True, either_side=True, distractor=0.5),
}

_TIMES = {2: "twice", 3: "three times", 4: "four times", 5: "five times"}
_PART = {2: "half", 3: "a third", 4: "a quarter", 5: "a fifth"}


def _describe(op: Op) -> str:
    """How the defined person's count relates to the other's: `4 more than`, `twice as many as`."""
    if op.kind == "add":
        return f"{op.operand} more than"
    if op.kind == "sub":
        return f"{op.operand} fewer than"
    if op.kind == "mul":
        return f"{_TIMES[op.operand]} as many as"
    return f"{_PART[op.operand]} as many as"


def _relation_sentence(new: str, old: str, op: Op, obj: str, flipped: bool, rng: random.Random) -> str:
    """A question's sentence saying new = op(old): from `new`'s side, or (flipped) from `old`'s."""
    if flipped:  # old = inverse(op)(new), said about old
        new, old, op = old, new, op.inverse()
    b = op.operand
    if op.kind in ("add", "sub"):
        word = "more" if op.kind == "add" else "fewer"
        return rng.choice((f"{new} has {b} {word} {obj} than {old}.", f"{new} has {b} {obj} {word} than {old}."))
    many = _TIMES[b] if op.kind == "mul" else _PART[b]
    return rng.choice((f"{new} has {many} as many {obj} as {old}.", f"{new} owns {many} as many {obj} as {old} does."))


def _anchor_sentence(name: str, value: int, obj: str, rng: random.Random) -> str:
    return rng.choice((f"{name} has {value} {obj}.", f"{name} owns {value} {obj}."))


_ANCHOR_LINES = ("{x} has {a} {obj}.", "We know {x} has {a} {obj}.", "First, {x} has {a} {obj}.")
_STEP_LINES = ("{y} has {rel} {x}: {eq}", "{y} has {rel} {x}, so {eq}", "Then {y} has {calc} {obj}.",
               "From {x}'s {a}, {y} gets {eq}")


@dataclass(frozen=True)
class RelationProblem:
    """One problem; drawn once, rendered without further randomness."""

    names: tuple[str, ...]  # the chain: names[0] is given, names[i + 1] = ops[i](names[i])
    obj: str
    start: int
    ops: tuple[Op, ...]
    sentences: tuple[str, ...]  # the question's fact sentences, in the order asked
    lines: tuple[int, ...]  # the phrasing of each solution line (anchor first)

    @property
    def skeleton(self) -> tuple:
        return _skeleton(self.start, list(self.ops), _TAG)

    def values(self) -> list[int]:
        out = [self.start]
        for op in self.ops:
            out.append(op.apply(out[-1]))
        return out

    @property
    def answer(self) -> int:
        return self.values()[-1]

    def question(self) -> str:
        return " ".join(self.sentences) + f" How many {self.obj} does {self.names[-1]} have?"

    def solution(self) -> str:
        values = self.values()
        lines = [_ANCHOR_LINES[self.lines[0]].format(x=self.names[0], a=self.start, obj=self.obj)]
        for i, op in enumerate(self.ops):
            a, c = values[i], values[i + 1]
            calc = f"{a} {op.symbol()} {op.operand} = {c}"
            lines.append(_STEP_LINES[self.lines[i + 1]].format(
                x=self.names[i], y=self.names[i + 1], rel=_describe(op), eq=_line(a, op, c), calc=calc, a=a,
                obj=self.obj))
        return template_response("\n".join(lines), str(self.answer))

    @classmethod
    def draw(cls, rng: random.Random, start: int, ops: list[Op], variant: Variant) -> "RelationProblem":
        names = rng.sample(NAMES, len(ops) + 2)  # the chain, and one more for a distractor
        chain, spare = tuple(names[:-1]), names[-1]
        obj = rng.choice(OBJECTS)
        values = [start]
        for op in ops:
            values.append(op.apply(values[-1]))
        sentences = [_anchor_sentence(chain[0], start, obj, rng)]
        for i, op in enumerate(ops):
            flipped = variant.either_side and rng.random() < 0.5
            sentences.append(_relation_sentence(chain[i + 1], chain[i], op, obj, flipped, rng))
        if variant.distractor and rng.random() < variant.distractor:
            sentences.append(_distractor(rng, spare, chain, values, obj, variant))
        if variant.shuffled:
            rng.shuffle(sentences)
        lines = (rng.randrange(len(_ANCHOR_LINES)),) + tuple(rng.randrange(len(_STEP_LINES)) for _ in ops)
        return cls(chain, obj, start, tuple(ops), tuple(sentences), lines)


def _distractor(rng: random.Random, name: str, chain: tuple[str, ...], values: list[int], obj: str,
                variant: Variant) -> str:
    """A sentence relating `name` to someone in the chain: true, and not needed."""
    while True:
        at = rng.randrange(len(chain))
        ops = _random_ops(values[at], 1, rng, Difficulty())
        if ops is not None:
            flipped = variant.either_side and rng.random() < 0.5
            return _relation_sentence(name, chain[at], ops[0], obj, flipped, rng)


def _sample(rng: random.Random, split: str, n_ops: int, d: Difficulty, used: set[tuple]) -> tuple[int, list[Op]]:
    while True:
        start = rng.randint(2, d.max_start)
        ops = _random_ops(start, n_ops, rng, d)
        if ops is None:
            continue
        skeleton = _skeleton(start, ops, _TAG)
        if _bucket(skeleton) in _BUCKETS[split] and skeleton not in used:
            if split in _UNIQUE:
                used.add(skeleton)
            return start, ops


def make_split(variant: str, split: str, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """`n` SPEC §8 records of a variant's split; the first n of a larger call are the same records."""
    if variant not in VARIANT_FEATURES:
        raise ValueError(f"unknown relations variant {variant!r}; expected one of {VARIANTS}")
    if split not in SPLITS:
        raise ValueError(f"unknown {variant} split {split!r}; expected one of {SPLITS}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    features, d = VARIANT_FEATURES[variant], Difficulty(max_ops=4)
    rng = random.Random(f"{variant}/{split}/{seed}")
    used: set[tuple] = set()
    records = []
    for index in range(n):
        start, ops = _sample(rng, split, rng.randint(*RELATIONS[split]), d, used)
        problem = RelationProblem.draw(rng, start, ops, features)
        records.append({
            "id": f"{variant}-{split}-{seed}-{index:06d}",
            "task": variant,
            "question": problem.question(),
            "reference": str(problem.answer),
            "choices": None,
            "meta": {"solution": problem.solution(), "num_ops": len(ops), "skeleton": skeleton_id(problem.skeleton)},
        })
    return records
