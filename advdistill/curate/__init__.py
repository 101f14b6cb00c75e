"""Stage 1, curate: the teacher's groups generated, scored and stored (SPEC §1, §3–§5)."""
