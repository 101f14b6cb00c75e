"""Stage 1, curate: teacher generation and scoring on Ray Data, resumable.

    records → GenerationActor (vLLM, K samples per prompt) → score (CPU tasks) → keyed Parquet shards

The driver streams scored batches out of Ray Data (`iter_batches`, so scoring of early batches
overlaps generation of later ones and memory stays bounded) and writes each batch as one Parquet
file named by a hash of its ids, atomically (temp file + rename). A crash leaves only whole
files; a rerun reads the ids already written and generates only the rest, so the output holds
every prompt id exactly once. Kept groups go to `groups/`, groups with no correct response to
`dropped/`, unusable input rows to `quarantine.jsonl`, and the figures to `summary.json`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from advdistill.config import ExperimentConfig, dump_config
from advdistill.data.loaders import load_records
from advdistill.scoring import score_group
from advdistill.teacher.actor import actor_pool, generate_stage
from advdistill.teacher.engines import GenerationParams

log = logging.getLogger(__name__)

KEPT_DIR, DROPPED_DIR = "groups", "dropped"
RECORD_COLUMNS = ("id", "task", "question", "reference", "choices", "meta")


def score_batch(batch: pa.Table, cfg: ExperimentConfig) -> pa.Table:
    """CPU stage: SPEC §3–§5 scoring of each group (the pure `score_group`)."""
    rows = batch.to_pylist()
    for row in rows:
        scored = score_group(row["responses"], row["token_lengths"], row["finish_reasons"], row["reference"],
                             row["task"], cfg.reward, cfg.advantage)
        row.update(scored)
    return pa.Table.from_pylist(rows)


# ---------------------------------------------------------------- keyed, atomic Parquet shards


def _shard_name(ids: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:24] + ".parquet"


def write_shard(folder: Path, rows: list[dict[str, Any]]) -> Path | None:
    """Write rows as one Parquet file named by their ids (rewriting the same batch is a no-op
    overwrite, never a duplicate), via a temp file and an atomic rename."""
    if not rows:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / _shard_name([r["id"] for r in rows])
    tmp = folder / f".{path.name}.{os.getpid()}.tmp"
    pq.write_table(pa.Table.from_pylist(rows), tmp)
    os.replace(tmp, path)
    return path


def read_shards(folder: Path, columns: list[str] | None = None) -> pa.Table | None:
    files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    if not files:
        return None
    return pa.concat_tables([pq.read_table(f, columns=columns) for f in files], promote_options="default")


def done_ids(output: Path) -> set[str]:
    ids: set[str] = set()
    for sub in (KEPT_DIR, DROPPED_DIR):
        table = read_shards(output / sub, ["id"])
        if table is not None:
            ids.update(table.column("id").to_pylist())
    return ids


# ---------------------------------------------------------------- the pipeline


def curate(cfg: ExperimentConfig, output: str | Path, *, few_shot: int | None = None) -> dict[str, Any]:
    """Run (or continue) curation into `output`; returns the summary (also `summary.json`)."""
    import ray

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "config.yaml").write_text(dump_config(cfg))
    few_shot = cfg.prompt.few_shot if few_shot is None else few_shot
    started = time.time()

    loaded = load_records(cfg.curate.dataset)
    _write_quarantine(output, loaded.quarantined)
    finished = done_ids(output)
    pending = [{k: r[k] for k in RECORD_COLUMNS} for r in loaded.records if r["id"] not in finished]
    total = len(loaded.records)
    log.info("curate: %d prompts, %d already written, %d to generate", total, total - len(pending), len(pending))
    print(f"[curate] {total} prompts: {total - len(pending)} already done, {len(pending)} to generate", flush=True)

    tokens, steady = 0, None
    if pending:
        for row in pending:  # Arrow needs one type per column: the free-form meta travels as JSON
            row["meta"] = json.dumps(row["meta"])
        s = cfg.curate.sampling
        params = GenerationParams(n=s.n, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, max_tokens=s.max_tokens,
                                  ignore_eos=s.ignore_eos)
        ds = generate_stage(ray.data.from_items(pending), model=cfg.teacher, engine=cfg.curate.engine, params=params,
                            prompt=cfg.prompt, few_shot=few_shot, seed=s.seed, resources=cfg.curate.resources)
        ds = ds.map_batches(score_batch, fn_kwargs={"cfg": cfg}, batch_size=cfg.curate.engine.batch_size,
                            batch_format="pyarrow", num_cpus=0.5)
        tokens, steady = _drain(ds, output, cfg, total, total - len(pending))

    run = {"started": started, "wall_seconds": time.time() - started, "tokens": tokens, "prompts": len(pending),
           "gpus": _pool_gpus(cfg) if pending else 0, "steady_tokens_per_s": steady}
    with (output / "runs.jsonl").open("a") as handle:
        handle.write(json.dumps(run) + "\n")
    summary = summarize(output, cfg, total, len(loaded.quarantined))
    (output / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _pool_gpus(cfg: ExperimentConfig) -> int:
    args, _, max_actors = actor_pool(cfg.curate.resources, cfg.curate.engine)
    return int(args.get("num_gpus", 0)) * max_actors


def _drain(ds, output: Path, cfg: ExperimentConfig, total: int, already: int) -> tuple[int, float | None]:
    """Consume the stream: write each batch as kept/dropped shards, print progress lines.
    Returns the tokens generated and the steady-state tokens/s (after the first batch, i.e.
    once the engines are up)."""
    done, tokens, start, last = already, 0, time.perf_counter(), 0.0
    first: tuple[float, int] | None = None
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        rows = batch.to_pylist()
        for row in rows:
            row.pop("generation_seconds", None)
            row["teacher"] = cfg.teacher
            row["sampling"] = json.dumps(cfg.curate.sampling.model_dump())
        write_shard(output / KEPT_DIR, [r for r in rows if r["keep"]])
        write_shard(output / DROPPED_DIR, [r for r in rows if not r["keep"]])
        done += len(rows)
        tokens += sum(sum(r["token_lengths"]) for r in rows)
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


def _write_quarantine(output: Path, quarantined: list[dict[str, Any]]) -> None:
    # Rewritten each run from the input: the same input gives the same file, never duplicates.
    with (output / "quarantine.jsonl").open("w") as handle:
        for row in quarantined:
            handle.write(json.dumps(row) + "\n")


def _histogram(values: list[float], bins: int = 20) -> dict[str, list[float]]:
    if not values:
        return {"counts": [], "edges": []}
    counts, edges = np.histogram(np.asarray(values, dtype=float), bins=bins)
    return {"counts": counts.tolist(), "edges": [round(e, 4) for e in edges.tolist()]}


def summarize(output: Path, cfg: ExperimentConfig, total: int, quarantined: int) -> dict[str, Any]:
    """Figures over everything written so far (all runs into this folder)."""
    columns = ["id", "correct", "token_lengths", "rewards", "advantages", "format_ok"]
    kept, dropped = read_shards(output / KEPT_DIR, columns), read_shards(output / DROPPED_DIR, columns)
    tables = [t for t in (kept, dropped) if t is not None]
    correct, tokens, rewards, advantages, fmt, per_group = [], 0, [], [], [], []
    for table in tables:
        for c in table.column("correct").to_pylist():
            correct.extend(c)
            per_group.append(sum(c))
        for lengths in table.column("token_lengths").to_pylist():
            tokens += sum(lengths)
        for r in table.column("rewards").to_pylist():
            rewards.extend(r)
        for a in table.column("advantages").to_pylist():
            advantages.extend(a)
        for f in table.column("format_ok").to_pylist():
            fmt.extend(f)
    runs = [json.loads(line) for line in (output / "runs.jsonl").read_text().splitlines() if line.strip()]
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
        "format_ok": float(np.mean(fmt)) if fmt else 0.0,
        "tokens_generated": int(tokens),
        "wall_seconds": round(wall, 2),
        "accelerator_hours": round(sum(r["wall_seconds"] * r["gpus"] for r in runs) / 3600, 4),
        "correct_per_group": np.bincount(per_group, minlength=k + 1).tolist() if per_group else [],
        "reward_histogram": _histogram(rewards),
        "advantage_histogram": _histogram(advantages),
    }
