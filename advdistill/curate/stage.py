"""Stage 1, curate: teacher generation and scoring on Ray Data, resumable.

    records → GenerationActor (vLLM, K samples per prompt) → ScoringActor (SPEC §3–§5) → keyed Parquet shards

The pipeline writes its own output: a last map stage (`curate.store.write_scored_batch`) puts
each scored batch's kept groups into `groups/` and the others into `dropped/` as keyed shards, on
whichever node ran it, into a folder every node sees (a shared mount or a URI such as
`s3://bucket/run/curate`). The driver only streams each row's id, verdict and token count
(`iter_batches`: progress lines, throughput) and writes `quarantine.jsonl` and `summary.json`. A
rerun generates only the prompts not yet written, so the output holds every prompt id exactly once.

A teacher behind an endpoint costs requests and tokens, not accelerator-hours: each group carries
what its prompt was asked of the server (requests sent, retries included; prompt and completion
tokens from `usage`), written with it, so the summary's `teacher_endpoint` sums what every group
written so far cost, across runs and reruns.
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
from advdistill.curate.store import CurateOutput, claim_curation, read_shards, write_scored_batch
from advdistill.data.loaders import load_records
from advdistill.generation.base import GenerationParams
from advdistill.generation.ledger import Held, Ledger
from advdistill.generation.pool import actor_pool
from advdistill.generation.ray_stage import USAGE, check_context, generate_and_score
from advdistill.schema import CuratedGroup, GeneratedGroup, Record, arrow_schema, columns
from advdistill.storage import uri
from advdistill.scoring import score_group

log = logging.getLogger(__name__)
RECORD_FIELDS = columns(Record)  # what a task's own verifier and reward terms get of a group


def score_curated(row: GeneratedGroup, cfg: ExperimentConfig) -> CuratedGroup:
    """SPEC §3–§5 scoring of one group (the pure `score_group`), stamped with the teacher and its
    sampling settings."""
    scored = score_group(row["responses"], row["token_lengths"], row["finish_reasons"], row["reference"], row["task"],
                         cfg.reward, cfg.advantage, record={k: row[k] for k in RECORD_FIELDS})
    return {**row, **scored, "teacher": cfg.teacher, "sampling": json.dumps(cfg.curate.sampling.model_dump())}


def curate(cfg: ExperimentConfig, output: str | Path, *, few_shot: int | None = None,
           restart: bool = False) -> dict[str, Any]:
    """Run (or continue) curation into `output`; returns the summary (also `summary.json`). An
    output of another curation is refused before anything runs, unless `restart` (`claim_curation`)."""
    out = claim_curation(cfg, output, few_shot, restart=restart)
    out.config.write_text(dump_config(cfg))
    few_shot = cfg.prompt.few_shot if few_shot is None else few_shot
    started = time.time()
    # The pool's bounds first: an autoscaling cluster without resources.max_actors is an error
    # now, not a pool of one discovered in the bill.
    pool = actor_pool(cfg.curate.resources, cfg.curate.engine, "curate")

    loaded = load_records(cfg.curate.dataset)
    params = GenerationParams.from_sampling(cfg.curate.sampling)
    # Prompts that leave no room for the teacher's max_tokens in its context are quarantined rows
    # (with the engine's tokenizer, before generation), like the rows the loader could not read.
    records, too_long = check_context(loaded.records, model=cfg.teacher, engine=cfg.curate.engine, params=params,
                                      prompt=cfg.prompt, few_shot=few_shot)
    quarantined = loaded.quarantined + [{**q, "dataset": cfg.curate.dataset.name} for q in too_long]
    out.write_quarantine(quarantined)
    finished = out.done_ids()
    pending = [r for r in records if r["id"] not in finished]
    total = len(records)
    log.info("curate: %d prompts, %d already written, %d to generate", total, total - len(pending), len(pending))
    print(f"[curate] {total} prompts: {total - len(pending)} already done, {len(pending)} to generate", flush=True)

    tokens, steady, held = 0, None, Held(0.0, 0.0, 0, 0)
    if pending:
        s = cfg.curate.sampling
        print(f"[curate] generation pool: {pool.min_actors}-{pool.max_actors} actor(s) of {pool.gpus_per_actor} "
              f"GPU(s) each ({pool.why})", flush=True)
        with Ledger.open() as ledger:
            ds = generate_and_score(pending, model=cfg.teacher, engine=cfg.curate.engine, params=params,
                                    prompt=cfg.prompt, few_shot=few_shot, seed=s.seed, pool=pool,
                                    score_row=partial(score_curated, cfg=cfg), schema=arrow_schema(CuratedGroup),
                                    ledger=ledger)
            # Written by the pipeline (any node), not the driver: only ids and counts come back.
            written = ds.map_batches(write_scored_batch, fn_kwargs={"folder": uri(out.folder)}, batch_size=None,
                                     batch_format="pyarrow", num_cpus=0.25)
            tokens, steady = _drain(written, cfg, total, total - len(pending))
            held = ledger.read()

    # What the pool held (ledger.py): its actors' lifetimes x their GPUs, not a snapshot of the cluster.
    out.log_run({"started": started, "wall_seconds": time.time() - started, "tokens": tokens, "prompts": len(pending),
                 **held.as_dict(), "pool": {"min_actors": pool.min_actors, "max_actors": pool.max_actors,
                                            "gpus_per_actor": pool.gpus_per_actor, "why": pool.why},
                 "steady_tokens_per_s": steady})
    summary = summarize(out, cfg, total, len(quarantined))
    summary["quarantine_reasons"] = quarantine_reasons(quarantined)
    out.summary.write_text(json.dumps(summary, indent=2))
    return summary


def quarantine_reasons(quarantined: list[dict[str, Any]]) -> dict[str, int]:
    """Quarantined rows counted by kind of reason (the text before its first colon)."""
    counts: dict[str, int] = {}
    for row in quarantined:
        kind = str(row.get("reason", "")).split(":")[0].strip() or "unknown"
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def _drain(ds, cfg: ExperimentConfig, total: int, already: int) -> tuple[int, float | None]:
    """Consume the stream of written rows (id, keep, tokens), print progress lines. Returns the
    tokens generated and the steady-state tokens/s (after the first batch, i.e. once the engines
    are up)."""
    done, tokens, start, last = already, 0, time.perf_counter(), 0.0
    first: tuple[float, int] | None = None
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        done += batch.num_rows
        tokens += pc.sum(batch.column("tokens")).as_py() or 0
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
    columns = ["id", "correct", "token_lengths", "rewards", "advantages", "format_ok", *USAGE]
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
        "accelerator_hours": round(sum(_accelerator_seconds(r) for r in runs) / 3600, 4),
        "generation_actors": {"started": sum(r.get("actors_started", 0) for r in runs),
                              "most_at_once": max((r.get("most_actors_at_once", 0) for r in runs), default=0)},
        "correct_per_group": np.bincount(per_group, minlength=k + 1).tolist() if per_group else [],
        "reward_histogram": _histogram(flat("rewards")),
        "advantage_histogram": _histogram(flat("advantages")),
        **endpoint_costs(cfg, tables),
    }


def _accelerator_seconds(run: dict[str, Any]) -> float:
    """A run's accelerator-seconds: its actors' leases; runs.jsonl lines written before the ledger
    have wall time x the pool's GPUs instead."""
    if "accelerator_seconds" in run:
        return float(run["accelerator_seconds"])
    return float(run["wall_seconds"]) * float(run.get("gpus", 0))


def endpoint_costs(cfg: ExperimentConfig, tables: list[Any]) -> dict[str, Any]:
    """For a teacher behind an endpoint (`backend: openai`): what it was asked, instead of
    accelerator-hours (it computes on someone else's accelerators), summed over the written
    groups' own counts: `requests` sent (the client's retries of failed attempts included),
    `prompt_tokens` and `completion_tokens` as the server counted them (`usage`), and
    `groups_counted`, the groups that carry counts (groups written without them count none)."""
    engine = cfg.curate.engine
    if engine.backend != "openai":
        return {}

    def total(name: str) -> int:
        return int(sum(pc.sum(t.column(name)).as_py() or 0 for t in tables))

    return {"teacher_endpoint": {"base_url": engine.endpoint.base_url, "model": engine.endpoint.model or cfg.teacher,
                                 "api": "completions", **{name: total(name) for name in USAGE},
                                 "groups_counted": sum(t.num_rows - t.column("requests").null_count for t in tables)}}
