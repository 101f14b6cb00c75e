"""Curate: the teacher samples K responses per prompt, rule-based verifiers score them, and the
groups with at least one correct response are written as Parquet (SPEC §1 stage 1, §9).

    python ray_jobs/curate.py --output runs/curate [--dataset NAME --split SPLIT] [--limit N]

Writes OUTPUT/groups/*.parquet (kept), OUTPUT/dropped/*.parquet, OUTPUT/quarantine.jsonl and
OUTPUT/summary.json. Rerunning with the same --output generates only the prompts not yet written;
a rerun with other settings is refused before Ray starts, naming them, unless --restart.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from advdistill.cli import check_input_path, check_inputs, check_output_dir, load_from_args, make_parser  # noqa: E402
from advdistill.local_ray import init_ray  # noqa: E402
from advdistill.rerun import RESTART_HELP  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = make_parser(__doc__)
    parser.add_argument("--output", required=True, help="output folder (rerun the same to resume)")
    parser.add_argument("--dataset", help="dataset name (curate.dataset.name)")
    parser.add_argument("--split", help="dataset split (curate.dataset.split)")
    parser.add_argument("--path", help="local JSONL/Parquet file with the hub's fields (curate.dataset.path)")
    parser.add_argument("--limit", type=int, help="first N prompts only (curate.dataset.limit)")
    parser.add_argument("--few-shot", type=int, help="exemplars in the teacher prompt (default prompt.few_shot)")
    parser.add_argument("--restart", action="store_true", help=RESTART_HELP)
    args = parser.parse_args(argv)
    extra = [f"curate.dataset.{key}={value}" for key, value in
             (("name", args.dataset), ("split", args.split), ("path", args.path), ("limit", args.limit)) if value is not None]
    cfg = load_from_args(args, extra)
    check_inputs(cfg, models=("teacher",), datasets=("curate.dataset",), path_option="--path FILE")
    check_output_dir(args.output)  # before Ray starts: a one-line error, not a traceback later
    if cfg.curate.dataset.path:
        check_input_path(cfg.curate.dataset.path, "dataset file")

    from advdistill.curate.stage import curate
    from advdistill.curate.store import claim_curation

    try:  # before Ray starts: an output of a curation with other settings is one line
        claim_curation(cfg, args.output, args.few_shot, restart=args.restart)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    init_ray()
    summary = curate(cfg, args.output, few_shot=args.few_shot)
    from advdistill.cards import write_dataset_card

    write_dataset_card(args.output)  # README.md: what the groups are, for the Hub and for datasets
    print(json.dumps({k: summary[k] for k in ("prompts_read", "kept", "dropped", "quarantined", "per_sample_accuracy",
                                              "tokens_generated", "wall_seconds")}, indent=2))
    return summary


if __name__ == "__main__":
    main()
