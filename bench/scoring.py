"""Scoring benchmark (issue: Benchmarks, target 4).

- Throughput: responses scored per CPU-second on one core, on GSM8K-like teacher outputs built
  from the real GSM8K test set (its reasoning in the template; right, wrong, off-template and
  free-form answers), via `score_group` exactly as the curation stage calls it (goal >= 5,000/s).
  Plain numbers never leave this process, so CPU time of this process is the whole cost.
- Worst case: the slowest single response over an adversarial corpus (power towers, factorials
  of huge numbers, huge nested fractions, deeply nested braces, 100k-character strings), on the
  answer side and on the reference side, timed by the wall clock in the main thread and again in
  a worker thread, and split over 4 threads scoring at once, as Ray Serve scores (goal <= 1 s
  per response).
- The one-time start-up per process (math-verify's fork server and first worker), and the
  latency of ordinary LaTeX answers through the workers, for context.

    python bench/scoring.py [--groups 400]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import threading
import time

from common import REPO, header

from advdistill.prompts import template_response
from advdistill.scoring import is_correct, score_group
from advdistill.scoring import math_verify_pool

EXPLOSIVE = [
    "10^{10^{10}}", "9^{9^{9}}", "2^{2^{2^{2^{2^{2}}}}}", "1000000!", "(10^{10})!", "(10^{100})!",
    "\\binom{10^{12}}{10^{6}}", "\\frac{10^{10^{8}}}{3^{10^{8}}}", "10^{10^{10}} - 10^{10^{10}} + 7",
]
ADVERSARIAL_TEXTS = [
    *(f"<think>x</think><answer>\\boxed{{{e}}}</answer>" for e in EXPLOSIVE),
    "<answer>\\boxed{" + "\\frac{1}{" * 200 + "2" + "}" * 200 + "}</answer>",  # deeply nested fraction
    "<answer>\\boxed{" + "\\frac{10^{100}}{" * 30 + "7" + "}" * 30 + "}</answer>",  # huge nested fraction
    "<answer>\\boxed{" + "{" * 5000 + "1" + "}" * 5000 + "}</answer>",  # deeply nested braces
    "<answer>\\boxed{" + "(" * 500 + "1" + ")" * 500 + "}</answer>",
    "<answer>\\boxed{" + "x^" * 3000 + "2}</answer>",
    "<answer>\\boxed{\\sqrt{\\sqrt{\\sqrt{2}}}^{100}}</answer>",
    "\\boxed{" * 20000, "}" * 50000 + "\\boxed{1}", "\\boxed{" + "{" * 30000 + "1" + "}" * 29999,
    "<answer>" * 10000 + "\\boxed{\\boxed{\\boxed{7}}}", "9" * 100000, "1," * 50000, "answer is " * 10000,
    "\\boxed{" + "x+" * 2000 + "1}", "<think>" + "a " * 50000 + "</think><answer>\\boxed{1}</answer>",
    "<answer>\\boxed{" + "1+" * 50000 + "1}</answer>",  # a 100k-character expression
    "<answer>\\boxed{\\frac{1}{0}}</answer>",
]
# (task, reference): every text against each; explosive references against ordinary answers.
REFERENCES = [("gsm8k", "1"), ("open_s1", "\\frac{1}{2}"), ("mmlu_pro", "A"), ("gsm_plus", None)]
ORDINARY = ["<answer>\\boxed{7}</answer>", "<answer>\\boxed{\\frac{1}{2}}</answer>", "<answer>\\boxed{x^2+1}</answer>"]
CASES = [(text, reference, task) for text in ADVERSARIAL_TEXTS for task, reference in REFERENCES]
CASES += [(text, explosive, "open_s1") for explosive in EXPLOSIVE for text in ORDINARY]

LATEX_PAIRS = [  # ordinary MATH-shaped answers, for the latency through the workers
    ("\\frac{\\sqrt{3}}{2}", "\\frac{1}{2}\\sqrt{3}"), ("(2, 2), (6, 2)", "\\boxed{(2, 2)} \\text{ and } \\boxed{(6, 2)}"),
    ("x^2+2x+1", "(x+1)^2"), ("[2, 5)", "[2,5)"), ("\\binom{8}{3}", "56"), ("4\\pi", "12.566371"),
    ("(-\\infty, 3) \\cup (5, \\infty)", "(5, \\infty) \\cup (-\\infty, 3)"), ("3+4i", "4i+3"),
    ("\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}", "\\begin{bmatrix} 1 & 2 \\\\ 3 & 4 \\end{bmatrix}"),
    ("y = -\\frac{1}{2}x + 3", "y=-0.5x+3"),
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


def throughput(groups, repeats: int) -> float:
    for responses, answer in groups[:20]:
        score_group(responses, [300] * 8, ["stop"] * 8, answer, "gsm8k")
    rates = []
    for _ in range(repeats):
        start = time.process_time()
        for responses, answer in groups:
            score_group(responses, [300] * 8, ["stop"] * 8, answer, "gsm8k")
        rates.append(len(groups) * 8 / (time.process_time() - start))
    return statistics.median(rates)


def slowest(cases) -> tuple[float, str, int]:
    """Wall seconds of the slowest response, its input, and how many ran into the time limit."""
    math_verify_pool._cached_verdict.cache_clear()  # time real comparisons, not cache hits
    worst, worst_case, limited = 0.0, "", 0
    for text, reference, task in cases:
        start = time.perf_counter()
        score_group([text], [2048], ["stop"], reference, task)
        elapsed = time.perf_counter() - start
        limited += elapsed >= math_verify_pool.TIME_LIMIT_S
        if elapsed > worst:
            worst, worst_case = elapsed, f"{text[:48]!r} vs reference {str(reference)[:24]!r} ({task})"
    return worst, worst_case, limited


def in_worker_thread(fn, *args):
    out = {}
    thread = threading.Thread(target=lambda: out.update(value=fn(*args)))
    thread.start()
    thread.join()
    return out["value"]


def slowest_concurrent(cases, threads: int) -> tuple[float, int]:
    """The cases split over `threads` threads scoring at once (Ray Serve's ingress scores in 4):
    wall seconds of the slowest response, and how many ran into the time limit."""
    math_verify_pool._cached_verdict.cache_clear()
    outs: list = [None] * threads
    workers = [threading.Thread(target=lambda i=i: outs.__setitem__(i, slowest(cases[i::threads])))
               for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    results = [o for o in outs if o is not None]
    return max(r[0] for r in results), sum(r[2] for r in results)


def latex_latency() -> float:
    """Median wall seconds per MATH-shaped LaTeX response through the workers (cache off)."""
    times = []
    for _ in range(3):
        math_verify_pool._cached_verdict.cache_clear()
        for gold, answer in LATEX_PAIRS:
            block = answer if "\\boxed" in answer else "\\boxed{" + answer + "}"
            text = f"<think>x</think><answer>{block}</answer>"
            start = time.perf_counter()
            is_correct(text, gold, "open_s1")
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", type=int, default=400, help="groups of 8 responses")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    header("Scoring throughput and worst case", "python bench/scoring.py")

    start = time.perf_counter()  # one-time start-up: math-verify's fork server and first worker
    math_verify_pool.warm_up()
    startup = time.perf_counter() - start

    math_verify_pool._cached_verdict.cache_clear()
    rate = throughput(gsm8k_groups(args.groups), args.repeats)
    info = math_verify_pool._cached_verdict.cache_info()
    # plain numbers stay on the fast path: not one GSM8K-like response went to math-verify
    assert info.hits + info.misses == 0, f"GSM8K-like answers reached math-verify: {info}"
    print(f"- GSM8K-like responses scored per CPU-second (one core, median of {args.repeats}): "
          f"**{rate:,.0f}/s** (goal >= 5,000/s)")

    worst_main, case_main, limited_main = slowest(CASES)
    worst_thread, case_thread, limited_thread = in_worker_thread(slowest, CASES)
    print(f"- slowest of {len(CASES)} adversarial responses, main thread: **{worst_main * 1000:.0f} ms** "
          f"(goal <= 1,000 ms; {case_main}; {limited_main} ran into the {math_verify_pool.TIME_LIMIT_S} s limit)")
    print(f"- the same in a worker thread: **{worst_thread * 1000:.0f} ms** "
          f"({case_thread}; {limited_thread} ran into the limit)")

    worst_4, limited_4 = slowest_concurrent(CASES, 4)
    print(f"- the same split over 4 threads scoring at once (as the Serve ingress): **{worst_4 * 1000:.0f} ms** "
          f"per response at worst ({limited_4} ran into the limit)")

    latency = latex_latency()
    print(f"- one-time start-up per process (math-verify fork server + first worker): {startup * 1000:.0f} ms")
    print(f"- MATH-shaped LaTeX answers through the workers, cache off: median {latency * 1000:.1f} ms per response")
    print("\n" + json.dumps({
        "responses_per_cpu_second": rate, "worst_case_seconds_main_thread": worst_main,
        "worst_case_seconds_worker_thread": worst_thread, "worst_case_seconds_4_threads": worst_4,
        "startup_seconds": startup,
        "latex_median_seconds": latency, "time_limit_seconds": math_verify_pool.TIME_LIMIT_S,
    }))


if __name__ == "__main__":
    main()
