"""The gates a task variant must pass before the pre-registered test runs on it
(bench/preregistration.md), measured on the TEACHER ONLY: its curated samples, nothing a student
produced.

    python bench/variant_gates.py --curated runs/relations-v1/seed-0/curate   # after curation
    python bench/variant_gates.py --curated runs/tiny/curate                  # the synthetic task, for comparison

From a curation folder (`groups/` kept, `dropped/` all-incorrect; K samples per prompt at the
config's temperature), with the teacher's tokenizer (the `teacher` of the folder's config.yaml):

- per-sample accuracy: correct samples / all samples, over every prompt;
- mixed groups: prompts with at least one correct and one incorrect sample / all prompts;
- first divergence of an incorrect response: where its computation departs from that of a correct
  response of its group — its numbers in order (digit runs, `\boxed{}` included) against those of
  the correct response that agrees with them longest; the character offset of its first number
  that differs, as a share of its character length (1.0 if none differs: its numbers are a prefix
  of the correct ones'); the median over the incorrect responses of the kept groups. Numbers, not
  tokens: a raw token prefix is cut short by words the tiny teacher garbles at temperature 0.9
  (the object, `Omar has 11 stamps.` / `Omar has 11 eggs.`), which put the synthetic task's raw
  token divergence at 10% of the length while its errors sit at a wrong result (measured on the
  demo's curation before any variant existed; reported beside it as `median_token_divergence`);
- incorrect–correct token overlap: the share of an incorrect response's tokens in the matching
  blocks (difflib, in order) with the best-matching correct response of its group; the mean over
  the same responses (bench/ablations.py's measure, which gave 92.4% on the synthetic task).

Writes `gates.json` into the folder and prints it with each gate's verdict.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import statistics
import sys
from pathlib import Path

from common import REPO

sys.path.insert(0, str(REPO))

# The pre-registered gates (bench/preregistration.md): name → (low, high), inclusive.
GATES = {
    "per_sample_accuracy": (0.65, 0.85),
    "mixed_groups": (0.40, 1.0),
    "median_first_divergence": (0.0, 0.40),
    "mean_overlap": (0.0, 0.80),
}


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


NUMBER = re.compile(r"\d+")


def numbers(text: str) -> list[tuple[str, int]]:
    """The numbers of a response in order, each with its character offset."""
    return [(m.group(), m.start()) for m in NUMBER.finditer(text)]


def number_divergence(incorrect: str, correct: list[str]) -> float:
    """Where `incorrect`'s numbers first depart from those of the correct response that agrees
    with them longest: that number's offset / len(incorrect); 1.0 if they never depart."""
    mine = numbers(incorrect)
    agree = max(common_prefix([v for v, _ in mine], [v for v, _ in numbers(c)]) for c in correct)
    return mine[agree][1] / max(1, len(incorrect)) if agree < len(mine) else 1.0


def matched_share(incorrect: list[int], correct: list[int]) -> float:
    blocks = difflib.SequenceMatcher(None, incorrect, correct, autojunk=False).get_matching_blocks()
    return sum(b.size for b in blocks) / max(1, len(incorrect))


def gate_figures(groups: list[tuple[list[str], list[list[int]], list[bool]]]) -> dict[str, float]:
    """The figures from every prompt's (responses, their token ids, correct) — kept and dropped."""
    samples = sum(len(c) for _, _, c in groups)
    correct = sum(sum(c) for _, _, c in groups)
    mixed = sum(0 < sum(c) < len(c) for _, _, c in groups)
    divergence, token_divergence, overlap = [], [], []
    for texts, ids, right in groups:
        good = [i for i, c in enumerate(right) if c]
        if not good:
            continue
        for i in (i for i, c in enumerate(right) if not c):
            divergence.append(number_divergence(texts[i], [texts[g] for g in good]))
            token_divergence.append(max(common_prefix(ids[i], ids[g]) for g in good) / max(1, len(ids[i])))
            overlap.append(max(matched_share(ids[i], ids[g]) for g in good))
    return {"prompts": len(groups), "samples": samples, "incorrect_in_kept_groups": len(divergence),
            "per_sample_accuracy": correct / samples if samples else 0.0,
            "mixed_groups": mixed / len(groups) if groups else 0.0,
            "median_first_divergence": statistics.median(divergence) if divergence else 1.0,
            "mean_overlap": statistics.fmean(overlap) if overlap else 1.0,
            "median_token_divergence": statistics.median(token_divergence) if token_divergence else 1.0}


def verdicts(figures: dict[str, float]) -> dict[str, bool]:
    return {name: low <= figures[name] <= high for name, (low, high) in GATES.items()}


def read_curation(folder: Path) -> tuple[list[tuple[list[str], list[bool]]], str]:
    """Every prompt's (responses, correct), kept and dropped, and the teacher the folder names."""
    import yaml

    from advdistill.curate.store import read_shards

    rows = []
    for sub in ("groups", "dropped"):
        table = read_shards(folder / sub, ["responses", "correct"])
        if table is not None:
            rows += list(zip(table.column("responses").to_pylist(), table.column("correct").to_pylist()))
    teacher = yaml.safe_load((folder / "config.yaml").read_text())["teacher"]
    return rows, teacher


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--curated", required=True, help="a curation folder (ray_jobs/curate.py --output)")
    args = parser.parse_args()
    folder = Path(args.curated)
    rows, teacher = read_curation(folder)
    from transformers import AutoTokenizer

    path = Path(teacher) if Path(teacher).is_absolute() else REPO / teacher
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    groups = [(list(responses), tokenizer(list(responses), add_special_tokens=False)["input_ids"],
               [bool(c) for c in correct]) for responses, correct in rows]
    figures = gate_figures(groups)
    passed = verdicts(figures)
    out = {"curated": str(folder), "teacher": teacher, "figures": figures, "gates": {k: list(v) for k, v in GATES.items()},
           "passed": passed, "all_passed": all(passed.values())}
    (folder / "gates.json").write_text(json.dumps(out, indent=2))
    for name, (low, high) in GATES.items():
        print(f"{name}: {figures[name]:.3f} (gate {low}–{high}) {'pass' if passed[name] else 'FAIL'}")
    print(f"(not a gate) median raw token divergence: {figures['median_token_divergence']:.3f}")
    print(f"prompts {figures['prompts']}, samples {figures['samples']}, incorrect responses in kept groups "
          f"{figures['incorrect_in_kept_groups']}; all gates passed: {out['all_passed']}")


if __name__ == "__main__":
    main()
