"""Scoring benchmark (issue: Benchmarks, target 4).

Responses scored per second on one core, on GSM8K-like teacher outputs built from the real GSM8K
test set (its reasoning in the template; right, wrong, off-template and free-form answers), via
`score_group` exactly as the curation stage calls it (goal >= 5,000/s); and the slowest single
response over adversarial inputs (goal <= 1 s).

    python bench/scoring.py [--groups 400]
"""

from __future__ import annotations

import argparse
import json
import re
import time

from common import REPO, header

from advdistill.prompts import template_response
from advdistill.scoring import score_group

ADVERSARIAL = [
    "\\boxed{" * 20000, "}" * 50000 + "\\boxed{1}", "\\boxed{" + "{" * 30000 + "1" + "}" * 29999,
    "<answer>" * 10000 + "\\boxed{\\boxed{\\boxed{7}}}", "9" * 100000, "1," * 50000, "answer is " * 10000,
    "\\boxed{9^{9^{9^{9^{9^{9}}}}}}", "\\boxed{" + "(" * 500 + "1" + ")" * 500 + "}", "\\boxed{\\frac{1}{0}}",
    "\\boxed{" + "x+" * 2000 + "1}", "<think>" + "a " * 50000 + "</think><answer>\\boxed{1}</answer>",
    "<answer>\\boxed{\\sqrt{\\sqrt{\\sqrt{2}}}^{100}}</answer>", "<answer>\\boxed{" + "\\frac{1}{" * 40 + "2" + "}" * 40 + "}</answer>",
]


def gsm8k_groups(n_groups: int) -> list[tuple[list[str], str]]:
    rows = [json.loads(line) for line in (REPO.parent / "shared" / "data" / "gsm8k" / "test.jsonl").read_text().splitlines()]
    groups = []
    for i in range(n_groups):
        row = rows[i % len(rows)]
        reasoning, answer = row["answer"].split("####")
        reasoning, answer = re.sub(r"<<[^>]*>>", "", reasoning).strip(), answer.strip().replace(",", "")
        wrong = str(int(float(answer)) + 1 + i % 7)
        responses = [
            template_response(reasoning, answer), template_response(reasoning, wrong),
            template_response(reasoning, f"{answer} dollars"), template_response(reasoning + "\nSo 2x = 4", f"\\${answer}"),
            reasoning + f"\nThe answer is {answer}.", reasoning + f"\n#### {wrong}",
            template_response(reasoning, f"\\frac{{{answer}}}{{1}}"), "<think>" + reasoning + "</think> no answer",
        ]
        groups.append((responses, answer))
    return groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", type=int, default=400, help="groups of 8 responses")
    args = parser.parse_args()
    header("Scoring throughput and worst case", "python bench/scoring.py")
    groups = gsm8k_groups(args.groups)
    start = time.perf_counter()  # one-time start-up: sympy and math-verify's LaTeX parser
    score_group(["<answer>\\boxed{x^2+1}</answer>"], [10], ["stop"], "1+x^2", "open_s1")
    startup = time.perf_counter() - start
    for responses, answer in groups[:20]:
        score_group(responses, [300] * 8, ["stop"] * 8, answer, "gsm8k")
    rates = []
    for _ in range(5):
        start = time.process_time()
        for responses, answer in groups:
            score_group(responses, [300] * 8, ["stop"] * 8, answer, "gsm8k")
        rates.append(len(groups) * 8 / (time.process_time() - start))
    rate = sorted(rates)[len(rates) // 2]
    print(f"- GSM8K-like responses scored per CPU-second (one core, median of 5): **{rate:,.0f}/s** (goal >= 5,000/s)")

    worst, worst_text = 0.0, ""
    for text in ADVERSARIAL:
        for task, reference in (("gsm8k", "1"), ("open_s1", "\\frac{1}{2}"), ("mmlu_pro", "A"), ("gsm_plus", None)):
            start = time.perf_counter()
            score_group([text], [2048], ["stop"], reference, task)
            elapsed = time.perf_counter() - start
            if elapsed > worst:
                worst, worst_text = elapsed, text[:40]
    print(f"- slowest adversarial response: **{worst * 1000:.0f} ms** (goal <= 1,000 ms; input starts {worst_text!r})")
    print(f"- one-time start-up per process (first LaTeX answer: sympy + math-verify's parser): {startup * 1000:.0f} ms")
    print("\n" + json.dumps({"responses_per_cpu_second": rate, "worst_case_seconds": worst, "startup_seconds": startup}))


if __name__ == "__main__":
    main()
