"""Distill: train the student on a groups table with the AdvDistill loss (or the SFT baseline)
on Ray Train with FSDP2 (SPEC §6).

    python ray_jobs/train.py --groups runs/curate --output runs/train-advdistill [--method advdistill|sft]

Writes OUTPUT/checkpoints/ (sharded, resumable), OUTPUT/final/ (a transformers folder with the
tokenizer) and OUTPUT/metrics.jsonl. Rerunning with the same --output resumes; a rerun with other
settings or other groups is refused before Ray starts, naming them, unless --restart.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from advdistill.cli import (check_input_path, check_inputs, check_model_flag, check_output_dir,  # noqa: E402
                            load_from_args, make_parser)
from advdistill.local_ray import init_ray  # noqa: E402
from advdistill.methods import method_names  # noqa: E402
from advdistill.rerun import RESTART_HELP  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = make_parser(__doc__)
    parser.add_argument("--groups", required=True, help="curate output folder (or its groups/ folder)")
    parser.add_argument("--output", required=True, help="output folder (rerun the same to resume)")
    parser.add_argument("--method", choices=method_names(),
                        help="training method: data selection and loss (train.method); its learning rate is "
                             "train.method_lr's for it, else train.lr")
    parser.add_argument("--mode", help=argparse.SUPPRESS)  # the old name: refused, naming the new one
    parser.add_argument("--student", help="student model, hub id or folder (default: the config's)")
    parser.add_argument("--restart", action="store_true", help=RESTART_HELP)
    args = parser.parse_args(argv)
    if args.mode is not None:
        parser.error("--mode was renamed --method")
    cfg = load_from_args(args, [f"train.method={args.method}"] if args.method else [])
    if args.student is None:
        check_inputs(cfg, models=("student",))
    else:
        check_model_flag("--student", args.student)

    from advdistill.train.trainer import claim_training, train

    # Before Ray starts: one-line errors naming the folder or file at fault (a shard without a
    # footer, an id in two shards, an output of a run with other settings).
    check_output_dir(args.output)
    check_input_path(args.groups, "groups folder")
    try:
        claim_training(cfg, args.groups, args.output, student=args.student, restart=args.restart)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    init_ray()
    metrics = train(cfg, args.groups, args.output, student=args.student)
    from advdistill.cards import curation_summary, write_model_card

    write_model_card(args.output, curation=curation_summary(args.groups))  # final/README.md
    print(json.dumps(metrics, indent=2, default=str))
    return metrics


if __name__ == "__main__":
    main()
