"""Evaluate a model's accuracy and behaviour (verbosity, degeneracy, template adherence) on a
dataset split through Ray Data (SPEC §7).

    python ray_jobs/evaluate.py --model PATH_OR_HUB_ID --dataset NAME --split SPLIT [--limit N] --output DIR

Writes DIR/metrics.json and DIR/predictions.jsonl. Greedy decoding; zero-shot unless --few-shot
(base models: pass the config's prompt.few_shot). Several splits (`--split test --split ood`)
are evaluated in one pass, one engine start, into DIR/SPLIT/ each. DIR holding another model's or
split's evaluation is refused before Ray starts, naming what differs, unless --restart.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from advdistill.cli import (check_dataset_flags, check_input_path, check_model_flag, check_output_dir,  # noqa: E402
                            load_from_args, make_parser)
from advdistill.local_ray import init_ray  # noqa: E402
from advdistill.rerun import RESTART_HELP  # noqa: E402
from advdistill.tasks import task_names  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = make_parser(__doc__)
    parser.add_argument("--model", required=True, help="hub id or local transformers folder")
    parser.add_argument("--dataset", required=True, help=f"dataset name ({', '.join(task_names())})")
    parser.add_argument("--split", required=True, action="append", help="dataset split (repeat for several)")
    parser.add_argument("--path", help="local JSONL/Parquet file with the hub's fields")
    parser.add_argument("--limit", type=int, help="first N records only")
    parser.add_argument("--few-shot", type=int, default=0, help="exemplars in the prompt (base models: prompt.few_shot)")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--restart", action="store_true", help=RESTART_HELP)
    args = parser.parse_args(argv)
    cfg = load_from_args(args)

    from advdistill.config import DatasetConfig
    from advdistill.evaluation.evaluator import EvalOutput, claim_evaluation, evaluate_splits

    try:
        datasets = {split: DatasetConfig(name=args.dataset, split=split, path=args.path, limit=args.limit)
                    for split in dict.fromkeys(args.split)}
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    # Before Ray starts: a missing model or an unreachable hub dataset is one line, not a traceback.
    check_model_flag("--model", args.model)
    check_dataset_flags("--dataset", datasets.values(), "--path FILE")
    check_output_dir(args.output)
    if args.path:
        check_input_path(args.path, "dataset file")
    several = len(datasets) > 1
    from advdistill.storage import location

    outputs = {split: EvalOutput(location(args.output) / split if several else args.output) for split in datasets}
    splits = {s: (d, outputs[s]) for s, d in datasets.items()}
    try:  # before Ray starts: an output of an evaluation with other settings is one line
        claim_evaluation(cfg, args.model, splits, few_shot=args.few_shot, restart=args.restart)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    init_ray()
    metrics = evaluate_splits(cfg, args.model, splits, few_shot=args.few_shot)
    shown = {s: {k: v for k, v in m.items() if not k.startswith("by_")} for s, m in metrics.items()}
    print(json.dumps(shown if several else shown[args.split[0]], indent=2))
    return metrics if several else metrics[args.split[0]]


if __name__ == "__main__":
    main()
