"""The last step of bench/gpu_slot.sh: `gpu-slot.md` from the parts' JSON files, the tables
bench/RESULTS.md §8-9 take unedited. A part without a result (killed, crashed) is a row saying so,
with its exit status and log.

    python bench/slot_table.py OUT     # writes OUT/gpu-slot.md and prints it
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from common import git_revision  # also puts the repository on sys.path

PARTS = [("part0-preflight", "0. preflight"), ("part1-train-path", "1. training path, one rank"),
         ("part2-logprobs", "2. chunked log-prob head"), ("part3-flex", "3. FlexAttention recompiles"),
         ("part4-gpu-train", "4. bench/gpu_train.py subset")]
GIB = 2**30


def load(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def gib(n: float | None) -> str:
    return "n/a" if n is None else f"{n / GIB:.1f} GiB"


def ms(r: dict[str, Any]) -> str:
    return f"{1000 * r['seconds']:.1f}" if "seconds" in r else r.get("skipped") or r.get("error", "—")


def summary(name: str, r: dict[str, Any]) -> str:
    """One line per part for the overview."""
    if name == "part0-preflight":
        v, c = r.get("versions", {}), r.get("compile", {})
        return (f"ready: {r.get('ready')}; torch {v.get('torch')}, transformers {v.get('transformers')}, triton "
                f"{v.get('triton')}; compile: {c}")
    if name == "part1-train-path":
        failed = [k for k, ok in r.get("checks", {}).items() if not ok]
        return f"all checks passed: {r.get('ok')}" + (f" (failed: {', '.join(failed)})" if failed else "")
    if name == "part3-flex":
        flex = r.get("flex", {})
        return flex.get("skipped") or f"{flex.get('graphs_compiled')} graphs compiled over lengths {r.get('lengths')}"
    if name == "part4-gpu-train":
        return f"{len(r.get('results', {}))} configurations; baseline {r.get('baseline')}"
    return "see below"


def part1(r: dict[str, Any]) -> list[str]:
    lines = [f"Device {r.get('device')}, {r.get('backend')}, {r.get('parameters', 0):,} parameters, "
             f"{r.get('layout')}, compute {r.get('compute_dtype')}, micro-batches of {r.get('tokens_per_micro_batch')} "
             "tokens (padded).", ""]
    for s in r.get("steps", []) + ([r["one_micro_batch_step"]] if "one_micro_batch_step" in r else []):
        lines.append(f"- step of {s['micro_batches']} micro-batch(es): {s['seconds']} s, loss {s['loss']:.4f}, "
                     f"grad norm {s['grad_norm']:.3f}, peak {gib(s['peak_bytes'])}")
    m = r.get("memory")
    if m:
        lines.append(f"- peak (2 micro-batches) {gib(m['peak_two_micro_batches'])} vs docs/memory.md's estimate "
                     f"{gib(m['estimate_peak'])}: **{m['measured_over_estimate']:.2f}x**; accumulated fp32 gradients "
                     f"measured {gib(m['accumulation_measured'])} (2 minus 1 micro-batch) vs predicted "
                     f"{gib(m['accumulation_predicted'])} (4 N)")
    if "checkpoint" in r:
        c = r["checkpoint"]
        lines.append(f"- sharded checkpoint: {gib(c['bytes'])}, saved in {c['save_seconds']} s, restored in "
                     f"{c.get('restore_seconds')} s (scratch {r.get('scratch')})")
    if "export" in r:
        e = r["export"]
        lines.append(f"- HF export: {e['dtype']}, {gib(e['bytes'])}, written in {e['seconds']} s, reloaded by "
                     f"transformers in {e.get('reload_seconds')} s; eos {e.get('eos_token_id')}")
    lines += [f"- {'✓' if ok else '✗'} {check.replace('_', ' ')}" for check, ok in r.get("checks", {}).items()]
    return lines


def part2(r: dict[str, Any]) -> list[str]:
    lines = [f"Head H {r['hidden']}, V {r['vocab']}, chunks of {r['chunk_size']}, {r['tokens']} tokens, {r['device']}.",
             "", "| gradient matmul (all chunks) | ms | vs fp32 | peak above inputs | max error / max entry |",
             "|---|---|---|---|---|"]
    for name, g in r.get("grad_weight_matmul", {}).items():
        vs = f"{g['vs_fp32']:.2f}x" if "vs_fp32" in g else "—"
        err = f"{g['max_error_over_max_entry']:.1e}" if "max_error_over_max_entry" in g else "—"
        lines.append(f"| {name} | {ms(g)} | {vs} | {gib(g.get('peak_bytes_above_inputs'))} | {err} |")
    head = r.get("head_forward_backward")
    if head:
        lines += ["", f"| log-probs, forward + backward ({head['dtype']}) | ms | peak above inputs |", "|---|---|---|"]
        for name in ("chunked", "full_logits"):
            h = head.get(name, {})
            lines.append(f"| {name} | {ms(h)} | {gib(h.get('peak_bytes_above_inputs'))} |")
        if "vs_full_logits" in head["chunked"]:
            lines.append(f"\nchunked / full-logits speed: {head['chunked']['vs_full_logits']:.2f}x")
    return lines


def part3(r: dict[str, Any]) -> list[str]:
    lines = [f"Packed lengths {r.get('lengths')} on {r.get('device')} (torch {r.get('torch')}); segments, steady: "
             f"{ms(r.get('segments_steady', {}))} ms per step.", ""]
    flex = r.get("flex", {})
    if "skipped" in flex:
        return lines + [f"FlexAttention: skipped: {flex['skipped']}"]
    lines += ["| length | step ms (compiles included) | graphs compiled | recompiles logged |", "|---|---|---|---|"]
    for e in flex.get("per_length", []):
        lines.append(f"| {e['length']} | {ms(e)} | {e['graphs_compiled']} | {e['recompiles_logged']} |")
    s = r.get("flex_steady")
    if s:
        vs = f", **{s['vs_segments']:.2f}x** the segments backend's speed" if "vs_segments" in s else ""
        lines.append(f"\nFlexAttention steady: {ms(s)} ms per step{vs}.")
    for reason in flex.get("recompile_reasons", [])[:3]:
        lines.append(f"\n    {reason.splitlines()[0][:200]}")
    return lines


def part4(r: dict[str, Any]) -> list[str]:
    import gpu_train

    results, base = r.get("results", {}), r.get("results", {}).get(r.get("baseline") or "", {})
    lines = [f"Device {r.get('device_name')}; {r.get('scored_tokens')} scored tokens per step; "
             f"F = {r.get('flops_per_step', 0) / 1e12:.2f} TFLOP; baseline for the ratios: {r.get('baseline')}.", "",
             "| configuration | step s | response tokens/s | vs baseline | MFU | peak memory |", "|---|---|---|---|---|---|"]
    lines += [gpu_train.table_row(name, result, base) for name, result in results.items()]
    if r.get("fastest_at_baseline_memory"):
        lines.append(f"\nFastest at equal or lower peak memory: {r['fastest_at_baseline_memory']} (goal >= 1.5x).")
    return lines


def main() -> None:
    out = Path(sys.argv[1])
    found = {name: load(out / f"{name}.json") for name, _ in PARTS}
    status = {name: load(out / f"{name}.status.json") or {} for name, _ in PARTS}
    device = (found["part0-preflight"] or {}).get("gpu", {})
    mode = (found["part0-preflight"] or {}).get("mode", "unknown")
    lines = [f"# bench/gpu_slot.sh — {device.get('name', 'no GPU') if isinstance(device, dict) else device}",
             "", f"Revision {git_revision()}; mode: {mode}"
             + (" (a CPU dry run at toy shapes: its figures say nothing about a GPU)" if mode != "gpu" else ""), "",
             "| part | exit | seconds (limit) | result |", "|---|---|---|---|"]
    for name, title in PARTS:
        s, r = status[name], found[name]
        outcome = summary(name, r) if r else f"no result (see {name}.log)"
        lines.append(f"| {title} | {s.get('rc', '—')} | {s.get('seconds', '—')} ({s.get('limit_s', '—')}) | "
                     f"{outcome.replace('|', '/')} |")
    for (name, title), render in zip(PARTS[1:], (part1, part2, part3, part4)):
        if found[name]:
            lines += ["", f"## {title}", "", *render(found[name])]
    text = "\n".join(lines) + "\n"
    (out / "gpu-slot.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
