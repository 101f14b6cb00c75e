"""Evaluation: the pure metrics (SPEC §7) and the offline evaluator on Ray Data."""
