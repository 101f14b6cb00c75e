"""The Ray Data generation stage shared by curation and evaluation: an actor that holds one
engine, builds each record's prompt and generates. Placement: one actor per
`tensor_parallel_size` GPUs, the pool sized to the cluster's GPUs (on CPU, one actor)."""

from __future__ import annotations

import hashlib
import time
import warnings
from typing import Any

import pyarrow as pa

from advdistill.config import EngineConfig, PromptConfig, ResourcesConfig
from advdistill.prompts import build_prompt
from advdistill.teacher.engines import GenerationParams, make_engine


def prompt_seed(base_seed: int, prompt_id: str) -> int:
    """A per-prompt sampling seed from the run's seed and the prompt id: the same prompt gets
    the same samples whatever batch or actor it lands in, and on every rerun."""
    digest = hashlib.sha256(f"{base_seed}/{prompt_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def use_assigned_cpus() -> int:
    """Ray starts workers with OMP_NUM_THREADS=1 (= one thread for torch), whatever CPUs the
    actor reserved; an engine on CPU should compute with all of them (measured here: 1 of 2 cores
    made curation 0.6x of a bare vLLM loop). Returns the thread count."""
    import ray
    import torch

    threads = max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
    if not torch.cuda.is_available():
        torch.set_num_threads(threads)
    return threads


class GenerationActor:
    """Record batch in, the same rows out with prompt, responses, token_lengths, finish_reasons."""

    def __init__(self, model: str, engine: EngineConfig, params: GenerationParams, prompt: PromptConfig,
                 few_shot: int, seed: int):
        use_assigned_cpus()
        self.engine = make_engine(model, engine, seed=seed)
        self.params, self.prompt_cfg, self.few_shot, self.seed = params, prompt, few_shot, seed

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()  # Arrow keeps None and nested lists exactly (numpy would not)
        prompts = [build_prompt(self.engine.tokenizer, r, few_shot=self.few_shot, prompt_cfg=self.prompt_cfg) for r in rows]
        seeds = [prompt_seed(self.seed, r["id"]) for r in rows] if self.params.temperature > 0 else None
        start = time.perf_counter()
        outputs = self.engine.generate(prompts, self.params, seeds)
        per_row = (time.perf_counter() - start) / max(len(rows), 1)
        for row, prompt, outs in zip(rows, prompts, outputs):
            row["prompt"] = prompt
            row["responses"] = [o.text for o in outs]
            row["token_lengths"] = [o.num_tokens for o in outs]
            row["finish_reasons"] = [o.finish_reason for o in outs]
            row["generation_seconds"] = per_row
        return pa.Table.from_pylist(rows)


# A dead generation actor is restarted and its in-flight batch retried, a bounded number of times
# (Ray Data's default is unbounded, which turns a deterministic crash, e.g. OOM at load, into a hang).
FAULT_TOLERANCE = {"max_restarts": 3, "max_task_retries": 3}


def actor_pool(resources: ResourcesConfig, engine: EngineConfig) -> tuple[dict[str, Any], int, int]:
    """Ray resources per generation actor and the pool's (min, max) size."""
    import ray

    cluster_gpus = int(ray.cluster_resources().get("GPU", 0))
    use_gpu = resources.use_gpu if resources.use_gpu is not None else cluster_gpus > 0
    tp = engine.tensor_parallel_size
    if use_gpu:
        args: dict[str, Any] = {"num_gpus": tp, "num_cpus": resources.cpus_per_worker}
        default_max = max(1, cluster_gpus // tp)
    else:
        args = {"num_cpus": resources.cpus_per_worker}
        default_max = 1  # on CPU a second engine competes for the same cores (FIELD-NOTES)
    max_size = resources.max_workers or default_max
    return args, min(resources.min_workers, max_size), max_size


def generate_stage(ds, *, model: str, engine: EngineConfig, params: GenerationParams, prompt: PromptConfig,
                   few_shot: int, seed: int, resources: ResourcesConfig):
    """`ds.map_batches(GenerationActor, ...)` on an autoscaling actor pool."""
    import ray

    remote_args, min_actors, max_actors = actor_pool(resources, engine)
    with warnings.catch_warnings():
        # Ray 2.60 has no named parameter for actor restarts yet; its own docs point to these
        # kwargs (map_batches(..., max_restarts=...)), which it flags as deprecated.
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
        return ds.map_batches(
            GenerationActor,
            fn_constructor_kwargs={"model": model, "engine": engine, "params": params, "prompt": prompt,
                                   "few_shot": few_shot, "seed": seed},
            batch_size=engine.batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(min_size=min_actors, max_size=max_actors),
            **remote_args,
            **FAULT_TOLERANCE,
        )
