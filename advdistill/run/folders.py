"""The folder of a `ray_jobs/distill.py` run (SPEC §9b), for the pipeline, its stages and the report.

    OUTPUT/config.yaml          the resolved config
    OUTPUT/run.json             the run's models, splits and what each stage cost
    OUTPUT/curate/              curation          (`curate.store.CurateOutput`)
    OUTPUT/train-NAME/          a training run    (`train.trainer.TrainOutput`)
    OUTPUT/eval/MODEL-SPLIT/    an evaluation     (`evaluation.evaluator.EvalOutput`)
    OUTPUT/report/              report.md and its figures
    OUTPUT/fingerprint.json     what defines the run: a rerun with other settings is refused (`advdistill.rerun`)

Each stage's output object lives beside the code that writes it and says whether the stage
finished (`is_complete()`); this one only names the folders. OUTPUT is a local folder or a URI
every node of a cluster sees (`s3://bucket/runs/gsm8k`; `advdistill.storage`).
"""

from __future__ import annotations

from pathlib import Path

from advdistill.config import DatasetConfig
from advdistill.curate.store import CurateOutput
from advdistill.evaluation.evaluator import EvalOutput
from advdistill.storage import PathLike, location
from advdistill.train.trainer import TrainOutput

TRAIN_PREFIX = "train-"


def split_label(ds: DatasetConfig) -> str:
    """`synthetic-test`: a dataset split's name in eval folders, tables and run.json."""
    return f"{ds.name}-{ds.split}"


class RunLayout:
    def __init__(self, root: str | Path | PathLike):
        self.root = location(root)
        self.config = self.root / "config.yaml"
        self.manifest = self.root / "run.json"
        self.report = self.root / "report"
        self.curate = CurateOutput(self.root / "curate")

    def train(self, name: str) -> TrainOutput:
        return TrainOutput(self.root / f"{TRAIN_PREFIX}{name}")

    def trainings(self) -> dict[str, TrainOutput]:
        """The training runs in this folder, by name."""
        return {path.name.removeprefix(TRAIN_PREFIX): TrainOutput(path)
                for path in sorted(self.root.glob(f"{TRAIN_PREFIX}*"), key=lambda p: p.name) if path.is_dir()}

    def eval(self, model: str, split: str) -> EvalOutput:
        return EvalOutput(self.root / "eval" / f"{model}-{split}")

    def owned(self) -> list[PathLike]:
        """What a distill.py run writes here (what `--restart` removes, `advdistill.rerun`): its
        files and its stages' folders. An MLflow file store (`mlruns/`) stays: earlier runs are
        history there, and the restarted run is a new MLflow run beside them."""
        return [self.config, self.manifest, self.report, self.curate.folder, self.root / "eval",
                *(t.folder for t in self.trainings().values())]
