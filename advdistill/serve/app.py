"""Ray Serve application: distilled checkpoints (and optionally the teacher) behind FastAPI.

    POST /evaluate   {model, items | dataset, sampling?} → SPEC §7 metrics + per-item results
    GET  /models     what is served, from which checkpoint, with which prompt settings
    GET  /healthz    liveness
    GET  /docs       OpenAPI

One `ModelServer` deployment per model holds an engine; requests reach it in chunks that
`@serve.batch` merges across concurrent requests into single engine calls. The ingress scores
with the offline evaluator's own functions, so both report the same numbers.

Input discipline: pydantic validation (422); unknown model 404; more items or tokens than the
configured limits 413; a bearer token when the env var named by `serve.token_env` is set (401);
dataset paths resolved inside `serve.data_root` only (anything else is 404, never a file read).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator
from ray import serve

from advdistill.config import REPO, DatasetConfig, ExperimentConfig, load_config, with_overrides
from advdistill.data.loaders import load_records
from advdistill.evaluation.evaluator import score_predictions
from advdistill.evaluation.metrics import summarize_predictions
from advdistill.generation.engines import GenerationParams
from advdistill.generation.rows import generate_rows
from advdistill.tasks import MAX_OPTIONS, TaskName, get_task, task_names

api = FastAPI(
    title="AdvDistill evaluation API",
    description="Accuracy and behaviour (verbosity, degeneracy, template adherence) of served models.",
    version="0.1.0",
)


class Item(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str = Field(min_length=1, max_length=100_000)
    reference: str | None = Field(None, description="gold answer; null for GSM-PLUS 'critical thinking' items")
    task: TaskName = Field(description=f"the task (verifier and prompt format): {', '.join(task_names())}")
    choices: list[str] | None = Field(None, min_length=1, max_length=MAX_OPTIONS,
                                      description=f"multiple-choice options (at most {MAX_OPTIONS}, lettered from A)")
    id: str | None = Field(None, max_length=200)


class DatasetRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: TaskName
    split: str = Field(min_length=1, max_length=50)
    limit: int | None = Field(None, ge=1)
    path: str | None = Field(None, description="JSONL/Parquet file relative to the server's data root")


class Sampling(BaseModel):
    model_config = ConfigDict(extra="forbid")
    temperature: float | None = Field(None, ge=0, le=2, description="default: greedy (0)")
    max_tokens: int | None = Field(None, ge=1, description="default: the config's eval.max_tokens")
    few_shot: int | None = Field(None, ge=0, le=16, description="default: the model's (k for base models, 0 otherwise)")
    seed: int = 0


class EvaluateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1, max_length=200)
    items: list[Item] | None = Field(None, min_length=1)
    dataset: DatasetRef | None = None
    sampling: Sampling = Sampling()

    @model_validator(mode="after")
    def _one_source(self) -> "EvaluateRequest":
        if (self.items is None) == (self.dataset is None):
            raise ValueError("give exactly one of 'items' or 'dataset'")
        return self


def inside(root: Path, candidate: str) -> Path | None:
    """`candidate` resolved under `root`, or None if it would leave it (.., absolute, symlinks)."""
    root = root.resolve()
    path = (root / candidate).resolve()
    return path if path == root or root in path.parents else None


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=64)
class ModelServer:
    """One model, one engine; chunks from concurrent requests are merged into engine calls."""

    def __init__(self, path: str, cfg: dict[str, Any]):
        from advdistill.generation.engines import make_engine

        self.cfg = ExperimentConfig.model_validate(cfg)
        self.engine = make_engine(path, self.cfg.eval.engine)

    async def generate(self, records: list[dict[str, Any]], params: dict[str, Any], few_shot: int) -> list[dict[str, Any]]:
        return await self._batched((records, params, few_shot))

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _batched(self, calls: list[tuple[list[dict[str, Any]], dict[str, Any], int]]) -> list[list[dict[str, Any]]]:
        results: list[list[dict[str, Any]]] = [[] for _ in calls]
        # Calls with the same sampling run as one engine call.
        by_params: dict[str, list[int]] = {}
        for index, (_, params, few_shot) in enumerate(calls):
            by_params.setdefault(json.dumps([params, few_shot], sort_keys=True), []).append(index)
        for key, indices in by_params.items():
            params_dict, few_shot = json.loads(key)
            seed = params_dict.pop("seed", 0)
            owners = [i for i in indices for _ in calls[i][0]]
            records = [r for i in indices for r in calls[i][0]]
            # vLLM's offline engine is synchronous: keep the replica's event loop free meanwhile.
            rows = await asyncio.to_thread(generate_rows, self.engine, records, GenerationParams(**params_dict),
                                           prompt=self.cfg.prompt, few_shot=few_shot, seed=seed)
            for owner, row in zip(owners, rows):
                results[owner].append(row)
        return results


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=256)
@serve.ingress(api)
class EvaluateAPI:
    def __init__(self, models: dict[str, Any], descriptions: list[dict[str, Any]], cfg: dict[str, Any]):
        from advdistill.scoring.math_verify_pool import warm_up

        warm_up()  # this replica scores every answer: start math-verify's workers before the first one
        self.models = models
        self.descriptions = {d["name"]: d for d in descriptions}
        self.cfg = ExperimentConfig.model_validate(cfg)
        self.token = os.environ.get(self.cfg.serve.token_env) or None

    def _authorize(self, request: Request) -> None:
        if self.token is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), self.token.encode()):
            raise HTTPException(401, "missing or invalid bearer token", headers={"WWW-Authenticate": "Bearer"})

    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/models")
    async def list_models(self, request: Request) -> dict[str, Any]:
        self._authorize(request)
        return {"models": list(self.descriptions.values())}

    @api.post("/evaluate")
    async def evaluate(self, body: EvaluateRequest, request: Request) -> dict[str, Any]:
        self._authorize(request)
        if body.model not in self.models:
            raise HTTPException(404, f"unknown model {body.model!r}; served: {sorted(self.models)}")
        limits = self.cfg.serve
        max_tokens = body.sampling.max_tokens or self.cfg.eval.max_tokens
        if max_tokens > limits.max_tokens_limit:
            raise HTTPException(413, f"max_tokens {max_tokens} exceeds the limit of {limits.max_tokens_limit}")
        records, group_by = self._records(body)
        if len(records) > limits.max_items:
            raise HTTPException(413, f"{len(records)} items exceed the limit of {limits.max_items} per request")
        few_shot = body.sampling.few_shot if body.sampling.few_shot is not None else self.descriptions[body.model]["few_shot"]
        temperature = body.sampling.temperature if body.sampling.temperature is not None else self.cfg.eval.temperature
        params = {"n": 1, "temperature": temperature, "top_p": 1.0, "max_tokens": max_tokens, "seed": body.sampling.seed}
        size = self.cfg.eval.engine.batch_size
        handle = self.models[body.model]
        chunks = await asyncio.gather(*[handle.generate.remote(records[i : i + size], params, few_shot)
                                        for i in range(0, len(records), size)])
        generated = [row for chunk in chunks for row in chunk]
        predictions = await asyncio.to_thread(score_predictions, generated)
        metrics = summarize_predictions(predictions, group_by=group_by)
        return {"model": body.model, "few_shot": few_shot, "metrics": metrics, "results": predictions}

    def _records(self, body: EvaluateRequest) -> tuple[list[dict[str, Any]], str | None]:
        if body.items is not None:
            records = [{"id": item.id or f"item-{i:05d}", "task": item.task, "question": item.question,
                        "reference": item.reference, "choices": item.choices, "meta": {}}
                       for i, item in enumerate(body.items)]
            return records, None
        ref = body.dataset
        path = None
        if ref.path is not None:
            resolved = inside(Path(self.cfg.serve.data_root), ref.path)
            if resolved is None or not resolved.is_file():
                raise HTTPException(404, f"dataset file {ref.path!r} not found")
            path = str(resolved)
        if ref.limit is not None and ref.limit > self.cfg.serve.max_items:
            raise HTTPException(413, f"limit {ref.limit} exceeds the limit of {self.cfg.serve.max_items} per request")
        try:
            loaded = load_records(DatasetConfig(name=ref.name, split=ref.split, path=path, limit=ref.limit))
        except (ValueError, FileNotFoundError) as err:
            raise HTTPException(404, f"dataset not available: {err}") from None
        except Exception as err:  # noqa: BLE001 - the hub may be unreachable from the cluster
            raise HTTPException(502, f"could not load dataset {ref.name!r}: {type(err).__name__}") from None
        return loaded.records, get_task(ref.name).group_by


def build_app(args: dict[str, Any]) -> serve.Application:
    """Application builder for `serve run` / `serve deploy` (see serve_configs/evaluate.yaml).

    args: config (experiment YAML), models: [{name, path, base_model, ray_actor_options?}], and any `serve.*`
    field (checkpoint_root, data_root, max_items, max_tokens_limit, token_env)."""
    args = dict(args)
    config = args.pop("config", None)
    cfg = with_overrides(load_config(REPO / config if config else None),
                         {f"serve.{k}": args.pop(k) for k in
                          ("checkpoint_root", "data_root", "max_items", "max_tokens_limit", "token_env") if k in args})
    models = args.pop("models", None)
    if not models:
        raise ValueError("build_app needs a non-empty 'models' list of {name, path, base_model}")
    # Relative roots are relative to the repository, not to wherever Serve builds the app (the
    # builder runs in a Ray task whose working directory is not the caller's).
    root, data_root = (REPO / cfg.serve.checkpoint_root).resolve(), (REPO / cfg.serve.data_root).resolve()
    cfg = with_overrides(cfg, {"serve.checkpoint_root": str(root), "serve.data_root": str(data_root)})
    handles, descriptions = {}, []
    for spec in models:
        name, path = spec["name"], spec["path"]
        resolved = inside(root, path)
        if resolved is None or not resolved.is_dir():
            raise ValueError(f"model {name!r}: {path!r} is not a folder inside the checkpoint root {root}")
        few_shot = cfg.prompt.few_shot if spec.get("base_model", False) else 0
        options: dict[str, Any] = {"name": f"model-{name}"}
        if spec.get("ray_actor_options"):
            options["ray_actor_options"] = spec["ray_actor_options"]
        handles[name] = ModelServer.options(**options).bind(str(resolved), cfg.model_dump(mode="json"))
        descriptions.append({"name": name, "checkpoint": path, "base_model": bool(spec.get("base_model", False)),
                             "few_shot": few_shot, "engine": cfg.eval.engine.engine, "max_tokens": cfg.eval.max_tokens})
    return EvaluateAPI.bind(handles, descriptions, cfg.model_dump(mode="json"))

