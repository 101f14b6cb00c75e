"""Evaluate a model's accuracy and behaviour (verbosity, degeneracy, template adherence) on a
dataset split through Ray Data (SPEC §7).

    python ray_jobs/evaluate.py --model PATH_OR_HUB_ID --dataset NAME --split SPLIT [--limit N] --output DIR

Writes DIR/metrics.json and DIR/predictions.jsonl. Greedy decoding; zero-shot unless --few-shot
(base models: pass the config's prompt.few_shot).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from advdistill.cli import check_input_path, check_output_dir, init_ray, load_from_args, make_parser  # noqa: E402
from advdistill.tasks import task_names  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = make_parser(__doc__)
    parser.add_argument("--model", required=True, help="hub id or local transformers folder")
    parser.add_argument("--dataset", required=True, help=f"dataset name ({', '.join(task_names())})")
    parser.add_argument("--split", required=True, help="dataset split")
    parser.add_argument("--path", help="local JSONL/Parquet file with the hub's fields")
    parser.add_argument("--limit", type=int, help="first N records only")
    parser.add_argument("--few-shot", type=int, default=0, help="exemplars in the prompt (base models: prompt.few_shot)")
    parser.add_argument("--output", required=True, help="output folder")
    args = parser.parse_args(argv)
    cfg = load_from_args(args)

    from advdistill.config import DatasetConfig
    from advdistill.evaluation.evaluator import evaluate

    try:
        dataset = DatasetConfig(name=args.dataset, split=args.split, path=args.path, limit=args.limit)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    check_output_dir(args.output)
    if args.path:
        check_input_path(args.path, "dataset file")
    init_ray()
    metrics = evaluate(cfg, args.model, dataset, args.output, few_shot=args.few_shot)
    print(json.dumps({k: v for k, v in metrics.items() if not k.startswith("by_")}, indent=2))
    return metrics


if __name__ == "__main__":
    main()
