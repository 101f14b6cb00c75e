"""The old name of `ray_jobs/curate.py` (the stage the README calls "curate"), kept for one
release: it says so on stderr, then runs curate.py with the same arguments.

    python ray_jobs/generate.py ...   # = python ray_jobs/curate.py ...
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

CURATE = Path(__file__).with_name("curate.py")


def main(argv: list[str] | None = None) -> dict:
    print("ray_jobs/generate.py is deprecated and will be removed: use ray_jobs/curate.py (same arguments)",
          file=sys.stderr, flush=True)
    return runpy.run_path(str(CURATE))["main"](argv)


if __name__ == "__main__":
    main()
