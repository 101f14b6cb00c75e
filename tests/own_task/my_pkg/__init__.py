"""A user's own package for the declared task of tests/own_task/unit-conversion.yaml: its
verifier (`checks`) and an extra reward term (`rewards`). Nothing here is part of advdistill: it
reaches the workers with `ray job submit --working-dir tests/own_task`."""
