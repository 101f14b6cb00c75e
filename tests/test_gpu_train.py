"""bench/gpu_train.py, the GPU training benchmark, runs on CPU at a reduced shape (`--tiny`), prints
every configuration's figures, and imports nothing the GPU image lacks (no Ray, vLLM, pydantic:
that image has torch and transformers only)."""

import json
import re
import subprocess
import sys

from conftest import REPO

RUN = """
import runpy, sys
sys.path.insert(0, {bench!r})
sys.argv = ["bench/gpu_train.py", "--tiny", "--repeats", "1"]
runpy.run_path({script!r}, run_name="__main__")
loaded = {{m.split(".")[0] for m in sys.modules}} | {{m for m in sys.modules if m.startswith("advdistill")}}
print("LOADED " + " ".join(sorted(loaded)))
"""


def test_gpu_train_runs_tiny_on_cpu_and_reports_every_configuration():
    code = RUN.format(bench=str(REPO / "bench"), script=str(REPO / "bench" / "gpu_train.py"))
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()

    loaded = set(next(line for line in lines if line.startswith("LOADED ")).split()[1:])
    assert not loaded & {"ray", "vllm", "pydantic", "advdistill.config", "advdistill.train.collate"}, loaded

    sys.path.insert(0, str(REPO / "bench"))
    import gpu_train
    import torch

    names = [s.name for s in gpu_train.setups(torch.device("cpu"))]
    assert len(names) == 18 and len(set(names)) == 18
    rows = {line.split("|")[1].strip(): line for line in lines if line.startswith("| ") and "---" not in line}
    for name in names:
        row = rows[name]
        if "packed-flex" in name:  # no FlexAttention backward on CPU
            assert "skipped" in row and "CPU" in row
        else:  # step seconds, tokens/s, ratio to the baseline
            assert re.search(r"\| [0-9.]+ \| [0-9,]+ \| [0-9.]+x \|", row), row

    result = json.loads(lines[lines.index("LOADED " + " ".join(sorted(loaded))) - 1])
    assert result["flops_per_step"] > 0 and set(result["results"]) == set(names)
    assert any("fastest at equal or lower peak memory" in line for line in lines)
