"""AdvDistill end to end: curate → train AdvDistill and the SFT baseline → evaluate teacher,
student base, SFT and AdvDistill in and out of distribution → report (→ serve).

    python ray_jobs/distill.py [--config configs/tiny.yaml] [--output runs/tiny] [--serve]
    ray job submit --working-dir . -- python ray_jobs/distill.py --config configs/paper-gsm8k.yaml

Writes OUTPUT/curate/, OUTPUT/train-advdistill/, OUTPUT/train-sft/, OUTPUT/eval/ and
OUTPUT/report/ (report.md + PNGs). Rerunning with the same --output skips finished stages; a rerun
with other settings is refused before Ray starts, naming them, unless --restart.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from advdistill.cli import check_inputs, check_output_dir, load_from_args, make_parser  # noqa: E402
from advdistill.local_ray import init_ray  # noqa: E402
from advdistill.rerun import RESTART_HELP  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = make_parser(__doc__)
    parser.add_argument("--output", help="output folder (default: runs/<config name>); rerun the same to continue")
    parser.add_argument("--serve", action="store_true", help="serve the checkpoints on the evaluation API afterwards")
    parser.add_argument("--restart", action="store_true", help=RESTART_HELP)
    args = parser.parse_args(argv)
    cfg = load_from_args(args)
    # Every model and hub dataset the run will load, before Ray starts: a typo is one line now,
    # not a failure after the whole curation.
    check_inputs(cfg, models=("teacher", "student", "extra_sft_students"),
                 datasets=("curate.dataset", "eval.test", "eval.ood"))
    output = args.output or str(Path("runs") / cfg.name)

    from advdistill.run.pipeline import claim_run, run

    check_output_dir(output)  # before Ray starts: a one-line error, not a traceback after its start-up
    try:  # a folder of a run with other settings: one line naming them, before Ray starts
        claim_run(cfg, output, restart=args.restart)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    init_ray()
    return run(cfg, output, serve=args.serve or cfg.serve.start_after_run)


if __name__ == "__main__":
    main()
