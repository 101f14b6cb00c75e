"""A `ray_jobs/distill.py` run: the end-to-end driver (`pipeline`), the folders of a run
(`folders`), the Ray nodes each stage's workers ran on (`placement`) and experiment tracking with
MLflow (`tracking`). The top layer: the stages below never import the driver (the training loop
uses only `tracking`'s step logger)."""
