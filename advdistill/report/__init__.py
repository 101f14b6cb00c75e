"""Report of a `ray_jobs/distill.py` run: Markdown + PNG, regenerated from the run's outputs."""

from advdistill.report.build import write_report

__all__ = ["write_report"]
