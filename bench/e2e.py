"""The embedded default end to end (issue: Benchmarks, target 6): `python ray_jobs/distill.py`
on this machine, stage by stage, against the 15-minute budget.

    python bench/e2e.py                 # runs the default into a fresh folder
    python bench/e2e.py --output runs/tiny  # the same, into a folder of your choice
    python bench/e2e.py --run runs/tiny # reads a finished run's run.json instead
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, header

BUDGET_S = 15 * 60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="an existing distill.py output folder")
    parser.add_argument("--output", help="where the fresh run goes (default: a new temporary folder); kept, so "
                                         "its report can be read afterwards")
    args = parser.parse_args()
    header("Embedded default end to end", "python bench/e2e.py" + (f" --run {args.run}" if args.run else ""))
    total = None
    if args.run:
        run = Path(args.run)
    else:
        run = Path(args.output) if args.output else Path(tempfile.mkdtemp(prefix="advdistill-e2e-")) / "run"
        if (run / "run.json").exists():
            raise SystemExit(f"{run} holds a run already: a rerun would skip its stages (pick a new --output)")
        start = time.perf_counter()
        subprocess.run([sys.executable, str(REPO / "ray_jobs" / "distill.py"), "--output", str(run)], check=True,
                       stdout=subprocess.DEVNULL)
        total = time.perf_counter() - start
    stages = json.loads((run / "run.json").read_text())["stages"]
    print("| stage | wall s | share of the budget |\n|---|---|---|")
    for name, cost in stages.items():
        print(f"| {name} | {cost['wall_seconds']:.0f} | {cost['wall_seconds'] / BUDGET_S:.2f} |")
    staged = sum(c["wall_seconds"] for c in stages.values())
    total = total or staged
    print(f"\n- whole run (process start to report, Ray start-up included): {total:.0f} s = "
          f"**{total / BUDGET_S:.2f}x** the 15-minute budget (goal <= 1.0x); stages account for {staged / total:.0%}")
    print("\n" + json.dumps({"total_s": total, "budget_ratio": total / BUDGET_S,
                             "stages_s": {k: v["wall_seconds"] for k, v in stages.items()}}))


if __name__ == "__main__":
    main()
