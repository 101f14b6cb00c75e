"""Export a curation's kept groups as a dataset TRL's trainers take as it is (no Ray):

    python ray_jobs/export.py --groups RUN/curate --format sft|preference|rewarded --output DIR

Writes DIR/train.parquet and DIR/README.md (a dataset card: teacher, sampling, verifier, how rows
were chosen, counts), which `datasets.load_dataset(DIR)` reads. Formats and the choices they make:
advdistill/curate/export.py and README "Export for TRL".
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from advdistill.curate.export import FORMATS, TRAINERS, export  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", required=True, help="a curation folder (RUN/curate: groups/, config.yaml)")
    parser.add_argument("--format", required=True, choices=FORMATS,
                        help="; ".join(f"{name}: TRL {trainer}" for name, trainer in TRAINERS.items()))
    parser.add_argument("--output", required=True, help="folder for train.parquet and README.md")
    parser.add_argument("--sft-responses", choices=("best", "correct"), default="best",
                        help="sft: each group's best correct response (default) or every correct one")
    parser.add_argument("--max-pairs-per-group", type=int, default=None,
                        help="preference: at most this many pairs per group (default: all, min(#correct, #incorrect))")
    args = parser.parse_args(argv)
    if not (Path(args.groups) / "groups").is_dir():
        raise SystemExit(f"error: {args.groups} is not a curation folder (no groups/): give RUN/curate")
    try:
        counts = export(args.groups, args.format, args.output, sft_responses=args.sft_responses,
                        max_pairs=args.max_pairs_per_group)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    print(json.dumps({"format": args.format, "output": args.output, **counts}))
    return counts


if __name__ == "__main__":
    main()
