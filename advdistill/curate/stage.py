"""Stage 1, curate: teacher generation and scoring on Ray Data, resumable.

    records → GenerationActor (vLLM, K samples per prompt) → ScoringActor (SPEC §3–§5) → keyed Parquet shards

The driver streams scored batches out of Ray Data (`iter_batches`, so scoring of early batches
overlaps generation of later ones and memory stays bounded) and hands each to the store
(`curate.store.CurateOutput`): kept groups to `groups/`, groups with no correct response to
`dropped/`, unusable input rows to `quarantine.jsonl`, and the figures to `summary.json`. A rerun
generates only the prompts not yet written, so the output holds every prompt id exactly once.
"""

from __future__ import annotations

import json
import logging
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc

from advdistill.config import ExperimentConfig, dump_config
from advdistill.curate.store import CurateOutput, read_shards
from advdistill.data.loaders import load_records
from advdistill.generation.engines import GenerationParams
from advdistill.generation.ray_stage import actor_pool, generate_and_score
from advdistill.schema import CuratedGroup, GeneratedGroup, arrow_schema
from advdistill.scoring import score_group

log = logging.getLogger(__name__)


def score_curated(row: GeneratedGroup, cfg: ExperimentConfig) -> CuratedGroup:
    """SPEC §3–§5 scoring of one group (the pure `score_group`), stamped with the teacher and its
    sampling settings."""
    scored = score_group(row["responses"], row["token_lengths"], row["finish_reasons"], row["reference"], row["task"],
                         cfg.reward, cfg.advantage)
    return {**row, **scored, "teacher": cfg.teacher, "sampling": json.dumps(cfg.curate.sampling.model_dump())}


def curate(cfg: ExperimentConfig, output: str | Path, *, few_shot: int | None = None) -> dict[str, Any]:
    """Run (or continue) curation into `output`; returns the summary (also `summary.json`)."""
    out = CurateOutput(Path(output))
    out.folder.mkdir(parents=True, exist_ok=True)
    out.config.write_text(dump_config(cfg))
    few_shot = cfg.prompt.few_shot if few_shot is None else few_shot
    started = time.time()

    loaded = load_records(cfg.curate.dataset)
    out.write_quarantine(loaded.quarantined)
    finished = out.done_ids()
    pending = [r for r in loaded.records if r["id"] not in finished]
    total = len(loaded.records)
    log.info("curate: %d prompts, %d already written, %d to generate", total, total - len(pending), len(pending))
    print(f"[curate] {total} prompts: {total - len(pending)} already done, {len(pending)} to generate", flush=True)

    tokens, steady = 0, None
    if pending:
        s = cfg.curate.sampling
        ds = generate_and_score(pending, model=cfg.teacher, engine=cfg.curate.engine,
                                params=GenerationParams.from_sampling(s), prompt=cfg.prompt, few_shot=few_shot,
                                seed=s.seed, resources=cfg.curate.resources, score_row=partial(score_curated, cfg=cfg),
                                schema=arrow_schema(CuratedGroup))
        tokens, steady = _drain(ds, out, cfg, total, total - len(pending))

    out.log_run({"started": started, "wall_seconds": time.time() - started, "tokens": tokens, "prompts": len(pending),
                 "gpus": _pool_gpus(cfg) if pending else 0, "steady_tokens_per_s": steady})
    summary = summarize(out, cfg, total, len(loaded.quarantined))
    out.summary.write_text(json.dumps(summary, indent=2))
    return summary


def _pool_gpus(cfg: ExperimentConfig) -> int:
    args, _, max_actors = actor_pool(cfg.curate.resources, cfg.curate.engine)
    return int(args.get("num_gpus", 0)) * max_actors


def _drain(ds, out: CurateOutput, cfg: ExperimentConfig, total: int, already: int) -> tuple[int, float | None]:
    """Consume the stream: write each batch as kept/dropped shards, print progress lines.
    Returns the tokens generated and the steady-state tokens/s (after the first batch, i.e.
    once the engines are up)."""
    done, tokens, start, last = already, 0, time.perf_counter(), 0.0
    first: tuple[float, int] | None = None
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        out.write_groups(batch)
        done += batch.num_rows
        tokens += pc.sum(pc.list_flatten(batch.column("token_lengths"))).as_py() or 0
        now = time.perf_counter()
        if first is None:
            first = (now, tokens)
        if now - last >= cfg.curate.progress_every_s or done == total:
            rate = tokens / max(now - start, 1e-9)
            print(f"[curate] {done}/{total} prompts, {tokens} tokens, {rate:,.0f} tokens/s", flush=True)
            last = now
    end = time.perf_counter()
    steady = (tokens - first[1]) / (end - first[0]) if first and end > first[0] and tokens > first[1] else None
    return tokens, steady


def _histogram(values: list[float], bins: int = 20) -> dict[str, list[float]]:
    if not values:
        return {"counts": [], "edges": []}
    counts, edges = np.histogram(np.asarray(values, dtype=float), bins=bins)
    return {"counts": counts.tolist(), "edges": [round(e, 4) for e in edges.tolist()]}


def summarize(out: CurateOutput, cfg: ExperimentConfig, total: int, quarantined: int) -> dict[str, Any]:
    """Figures over everything written so far (all runs into this folder)."""
    columns = ["id", "correct", "token_lengths", "rewards", "advantages", "format_ok"]
    kept, dropped = read_shards(out.groups, columns), read_shards(out.dropped, columns)
    tables = [t for t in (kept, dropped) if t is not None]

    def flat(name: str) -> list[Any]:
        return [v for t in tables for v in pc.list_flatten(t.column(name)).to_pylist()]

    correct, format_ok = flat("correct"), flat("format_ok")
    per_group = [sum(c) for t in tables for c in t.column("correct").to_pylist()]
    runs = out.read_runs()
    wall = sum(r["wall_seconds"] for r in runs)
    k = cfg.curate.sampling.n
    return {
        "teacher": cfg.teacher,
        "dataset": cfg.curate.dataset.model_dump(),
        "samples_per_prompt": k,
        "prompts_read": total,
        "prompts_written": sum(t.num_rows for t in tables),
        "kept": kept.num_rows if kept is not None else 0,
        "dropped": dropped.num_rows if dropped is not None else 0,
        "quarantined": quarantined,
        "per_sample_accuracy": float(np.mean(correct)) if correct else 0.0,
        "format_ok": float(np.mean(format_ok)) if format_ok else 0.0,
        "tokens_generated": int(sum(flat("token_lengths"))),
        "wall_seconds": round(wall, 2),
        "accelerator_hours": round(sum(r["wall_seconds"] * r["gpus"] for r in runs) / 3600, 4),
        "correct_per_group": np.bincount(per_group, minlength=k + 1).tolist() if per_group else [],
        "reward_histogram": _histogram(flat("rewards")),
        "advantage_histogram": _histogram(flat("advantages")),
    }
