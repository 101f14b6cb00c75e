"""A `ray_jobs/distill.py` run: the end-to-end driver (`pipeline`), the folders of a run
(`folders`), the Ray nodes each stage's workers ran on (`placement`) and experiment tracking with
MLflow (`tracking`). The top layer: nothing below it imports the driver; the training loop uses
`tracking`'s step logger and the report reads a run's `folders`."""
