"""Part 0 of bench/gpu_slot.sh: is this machine able to run the rest? (at most 30 s)

Versions (Python, torch, CUDA, transformers, triton), `nvidia-smi`, a C compiler (inductor
builds its launchers with one), one tiny `torch.compile` on CUDA with inductor, bf16 support,
FlexAttention, free GPU memory and scratch space. Every check is recorded, none stops the script:
a missing piece is a finding. On CPU (`--cpu`, the dry run) the compile uses dynamo's eager
backend (inductor on CPU would spend the dry run's seconds building C++).

    python bench/slot_preflight.py --json OUT/part0-preflight.json [--cpu]
"""

from __future__ import annotations

import argparse
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from common import write_json  # also puts the repository on sys.path


def attempt(checks: dict[str, Any], name: str, fn: Callable[[], Any]) -> None:
    """checks[name] = fn(), or the error it raised."""
    try:
        checks[name] = fn()
    except Exception as err:  # noqa: BLE001 - every failure is a finding of the preflight
        checks[name] = {"error": f"{type(err).__name__}: {err}"[:500]}


def versions() -> dict[str, Any]:
    import torch
    import transformers

    out = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None}
    try:
        import triton

        out["triton"] = triton.__version__
    except ImportError:
        out["triton"] = None
    return out


def nvidia_smi() -> str:
    if shutil.which("nvidia-smi") is None:
        return "not installed"
    fields = "name,memory.total,memory.used,driver_version,power.limit,clocks.max.sm"
    run = subprocess.run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"], capture_output=True,
                         text=True, timeout=15)
    return (run.stdout or run.stderr).strip()


def compilers() -> dict[str, str | None]:
    return {name: shutil.which(name) for name in ("cc", "gcc", "g++", "clang", "nvcc")}


def tiny_compile(on_gpu: bool) -> dict[str, Any]:
    """One small function through torch.compile: inductor (Triton kernels) on CUDA, dynamo's eager
    backend on CPU; checks its result against eager."""
    import torch

    device = "cuda" if on_gpu else "cpu"
    backend = "inductor" if on_gpu else "eager"
    fn = torch.compile(lambda x: torch.nn.functional.silu(x) @ x.t() + 1.0, backend=backend)
    x = torch.randn(64, 64, device=device)
    start = time.perf_counter()
    y = fn(x)
    if on_gpu:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    close = torch.allclose(y, torch.nn.functional.silu(x) @ x.t() + 1.0, rtol=1e-3, atol=1e-3)
    return {"backend": backend, "device": device, "seconds": round(seconds, 2), "matches_eager": bool(close)}


def gpu_facts() -> dict[str, Any]:
    import torch

    from advdistill.train.attention import flex_available

    out: dict[str, Any] = {"cuda_available": torch.cuda.is_available(), "flex_attention": flex_available()}
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        out.update(name=torch.cuda.get_device_name(0), capability=".".join(map(str, torch.cuda.get_device_capability(0))),
                   bf16=torch.cuda.is_bf16_supported(), free_gib=round(free / 2**30, 1), total_gib=round(total / 2**30, 1))
    return out


def scratch() -> dict[str, float]:
    """Free GiB where part 1 may write its checkpoint (it picks /dev/shm when big enough)."""
    places = {"tmp": tempfile.gettempdir(), "dev_shm": "/dev/shm"}
    return {name: round(shutil.disk_usage(path).free / 2**30, 1) for name, path in places.items() if Path(path).exists()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", required=True)
    parser.add_argument("--cpu", action="store_true", help="the dry run: no CUDA expected")
    args = parser.parse_args()
    checks: dict[str, Any] = {"mode": "cpu dry run" if args.cpu else "gpu"}
    attempt(checks, "versions", versions)
    attempt(checks, "nvidia_smi", nvidia_smi)
    attempt(checks, "compilers", compilers)
    attempt(checks, "gpu", gpu_facts)
    attempt(checks, "scratch_free_gib", scratch)
    write_json(args.json, checks)  # before the compile: the slowest check, and the likeliest to hang
    attempt(checks, "compile", lambda: tiny_compile(on_gpu=not args.cpu))
    gpu = checks["gpu"] if isinstance(checks["gpu"], dict) else {}
    compiled = isinstance(checks["compile"], dict) and checks["compile"].get("matches_eager")
    checks["ready"] = bool(compiled and (args.cpu or (gpu.get("cuda_available") and gpu.get("bf16"))))
    write_json(args.json, checks)
    for name, value in checks.items():
        print(f"{name}: {value}")


if __name__ == "__main__":
    main()
