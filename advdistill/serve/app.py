"""The evaluation API on Ray Serve: distilled checkpoints (and optionally the teacher) behind
FastAPI. This module declares the ingress deployment and builds the application (`build_app`,
the `import_path` of serve_configs/evaluate.yaml).

    POST /evaluate   {model, items | dataset, sampling?} → SPEC §7 metrics + per-item results
    POST /evaluations  the same body → 202 and a job id at once (long evaluations)
    GET  /evaluations/{id}  status, items done / total, and when done the /evaluate answer
    GET  /models     what is served, from which checkpoint, with which prompt settings; the
                     checkpoints loaded on demand and those available
    GET  /v1/models, POST /v1/completions, POST /v1/chat/completions   OpenAI-compatible,
                     streaming included
    GET  /healthz    liveness
    GET  /docs       OpenAPI

Where each part lives (advdistill/serve/):
- `deployments`: the model replicas — one `ModelServer` per configured model, and the on-demand
  `checkpoints` deployment for any model folder under the checkpoint root;
- `api` assembles the FastAPI app from `routes/` (`models`, `evaluations`, `openai`; auth is the
  `routes.dependencies.authorized` dependency), `error_handlers` and `guard`;
- `service`: one ingress replica's state — `catalog` (what a request's `model` names),
  `planning` (every check before generation, raising `errors`), `execution` (chunks on the
  replicas, one retry loop for a replica that dies, scoring), `job_runner` (background jobs on
  `jobs` files, adopted when their replica stops);
- `schemas`, `openai_compat` and `openai_answers`: request and answer schemas (`openai_errors`: /v1
  errors in OpenAI's shape); `paths`: containment rules.

Input discipline, in this order (every bad request is a 4xx, never a 500):
- 401 before anything is read: with the env var named by `serve.token_env` set, a request without
  `Authorization: Bearer <token>` is refused before its body is parsed (`RequestGuard`, an ASGI
  middleware; /healthz and the OpenAPI pages stay open). Without a token the replica starts only
  on a loopback bind (`auth`).
- 408 for a body that has not arrived `serve.body_timeout_s` after its headers.
- 413 for a body over `serve.max_body_bytes`, more items than `serve.max_items`, `max_tokens` over
  `serve.max_request_tokens`, more prompt text than `serve.max_request_chars` (counted before
  tokenizing), a dataset file over `serve.max_dataset_bytes`.
- 422 naming the field at fault: pydantic validation (every string and list has a length limit;
  NaN/Infinity, NUL bytes and lone surrogates are refused), references a task cannot judge
  (`9^{9^{9}}` for a number task), `few_shot` beyond the exemplars available, a prompt longer than
  the served model's context minus `max_tokens` (checked with the model's tokenizer before
  anything is generated), a file that is not a dataset or holds no usable record. Validation
  errors quote at most a short excerpt of the input.
- 404 for an unknown model, a checkpoint folder that is not loadable (remembered for
  `serve.load_failure_ttl_s`), or a path that does not resolve inside its root (no `..`, absolute
  paths, symlinks out, hidden folders such as `.git` as written or once resolved).
- 503 with Retry-After when every on-demand engine is answering requests for `serve.evict_wait_s`,
  or the job database cannot be opened; chat content holding special-token text is a 422.

The ingress never blocks its event loop: tokenising, dataset loading (time-bounded by
`serve.load_timeout_s`; local files only unless `serve.allow_hub`) and scoring (each math-verify
comparison bounded in a worker process, `scoring.math_verify_pool`) run in a thread pool, so
/healthz answers while any request is served.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import ray
from ray import serve

from advdistill.config import REPO, ExperimentConfig, load_config, with_overrides
from advdistill.preflight import nearby
from advdistill.prompts import exemplars_for
from advdistill.serve.api import make_api
from advdistill.serve.auth import auth_line, bind_host
from advdistill.serve.capacity import engine_options, memory_fraction, serving_gpus
from advdistill.serve.catalog import load_tokenizer
from advdistill.serve.deployments import GRACEFUL_SHUTDOWN_S, ModelServer, checkpoint_server
from advdistill.serve.paths import under_root
from advdistill.serve.service import EvaluationService
from advdistill.storage import is_uri
from advdistill.task_declaration import with_declared_tasks
from advdistill.tasks import task_names

api = make_api()
HEAD_RESOURCE = "node:__internal_head__"  # Ray's own resource of the head node


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=256,
                  graceful_shutdown_timeout_s=GRACEFUL_SHUTDOWN_S, graceful_shutdown_wait_loop_s=0.5)
@serve.ingress(api)
class EvaluateAPI(EvaluationService):
    """The ingress replica: `api`'s routes answer with this replica's state (`EvaluationService`)."""

    def __init__(self, models: dict[str, Any], descriptions: list[dict[str, Any]], cfg: dict[str, Any],
                 tokenizer_paths: dict[str, str] | None = None, checkpoints: Any = None):
        from advdistill.scoring.math_verify_pool import warm_up  # starts worker processes: replicas only

        token_env = cfg["serve"]["token_env"]
        # Never an open API on an address other than loopback: the replica refuses to start.
        print(f"[evaluation API] {auth_line(bind_host(), os.environ.get(token_env) or None, token_env)}", flush=True)
        warm_up()  # this replica scores every answer: start math-verify's workers before the first one
        # Prompts are checked against each model's context with its own tokenizer, here, before
        # any chunk reaches a model server.
        tokenizers = {name: load_tokenizer(path) for name, path in (tokenizer_paths or {}).items()}
        super().__init__(ExperimentConfig.model_validate(cfg), models, descriptions, tokenizers, checkpoints)
        # Serve runs the constructor on the replica's event loop: adopt the jobs of replicas that stopped.
        self.adopter = asyncio.get_running_loop().create_task(self.jobs.adopt_stale_jobs())


def check_data_root(data_root: Path) -> None:
    """A data root is a data folder: never the repository (it would serve `.git`, `.venv`), a
    home folder or the file system's root."""
    forbidden = {REPO.resolve(), Path.home().resolve(), Path("/")}
    if data_root in forbidden or (data_root / ".git").exists():
        raise ValueError(f"serve.data_root {data_root} is not a data folder (a repository, home or root folder); "
                         "point it at a folder of dataset files, e.g. data/")


def configured_model(checkpoint_root: str, path: str) -> Path | Any | None:
    """A configured model's folder: inside the checkpoint root, or (an operator's choice, never a
    request's) an absolute local path."""
    inside = under_root(checkpoint_root, path)
    if inside is None and not is_uri(path) and Path(path).is_absolute():
        return Path(path).resolve()
    return inside


def build_app(args: dict[str, Any]) -> serve.Application:
    """Application builder for `serve run` / `serve deploy` (see serve_configs/evaluate.yaml).

    args: config (experiment YAML), models: [{name, path, base_model, ray_actor_options?}] (a path
    inside the checkpoint root, or an absolute one: a configured model is the operator's choice),
    api_ray_actor_options (the ingress replica's, e.g. a runtime_env with the token variable),
    checkpoints_ray_actor_options (each on-demand engine's process, e.g. {num_cpus: 1}) and any
    field of `serve` (`ServeConfig`: checkpoint_root, data_root, max_items, ...), which
    ServeConfig validates: an unknown or renamed one fails naming it.

    Where the cluster has GPUs, every model replica and on-demand engine holds
    `serve.gpus_per_replica` of one with the matching memory share, and the plan is checked
    against the cluster's GPUs first (`capacity`): an infeasible one fails here, in seconds."""
    args = dict(args)
    config = args.pop("config", None)
    models = args.pop("models", None) or []
    api_options = args.pop("api_ray_actor_options", None)
    checkpoints_options = args.pop("checkpoints_ray_actor_options", None)
    cfg = with_overrides(load_config(REPO / config if config else None), {f"serve.{k}": v for k, v in args.items()})
    if not models and not cfg.serve.on_demand:
        raise ValueError("build_app needs a non-empty 'models' list of {name, path, base_model} (or serve.on_demand)")
    # Relative roots are relative to the repository, not to wherever Serve builds the app (the
    # builder runs in a Ray task whose working directory is not the caller's).
    root, data_root = (REPO / cfg.serve.checkpoint_root).resolve(), (REPO / cfg.serve.data_root).resolve()
    # A checkpoint root on shared storage (s3://…, advdistill.storage): models are folders under
    # it, which each replica fetches to its own node.
    checkpoint_root = cfg.serve.checkpoint_root if is_uri(cfg.serve.checkpoint_root) else str(root)
    check_data_root(data_root)
    for task in task_names():  # a base model's default few_shot must be servable for every task
        exemplars_for(task, cfg.prompt.few_shot, cfg.prompt.exemplars_path)
    if is_uri(cfg.serve.jobs_folder):
        raise ValueError(f"serve.jobs_folder {cfg.serve.jobs_folder!r} is a URI: evaluation jobs are kept in SQLite "
                         "on the node of the API replicas (an object store cannot give a job to one replica only); "
                         "give a local folder (see README: Serving)")
    overrides: dict[str, Any] = {"serve.checkpoint_root": checkpoint_root, "serve.data_root": str(data_root),
                                 "serve.jobs_folder": str((REPO / cfg.serve.jobs_folder).resolve())}
    # GPUs: every engine (one per model, and the on-demand ones) holds serve.gpus_per_replica of one;
    # a plan the cluster cannot place fails now (capacity.GpuPlanError), not as replicas that wait.
    engines = len(models) + (cfg.serve.max_models_per_replica if cfg.serve.on_demand else 0)
    gpus, plan = serving_gpus(cfg, engines) if ray.is_initialized() else (0.0, None)
    if plan:
        print(f"[evaluation API] {plan}", flush=True)
    if gpus:
        overrides["eval.engine.gpu_memory_utilization"] = memory_fraction(cfg)
    cfg = with_overrides(cfg, overrides)
    cfg_json = cfg.model_dump(mode="json")
    handles, descriptions, tokenizer_paths = {}, [], {}
    for spec in models:
        name, path = spec["name"], spec["path"]
        resolved = configured_model(checkpoint_root, path)
        if resolved is None or not (resolved / "config.json").is_file():  # checked before any replica starts
            raise ValueError(f"model {name!r}: {path!r} is not a model folder (with a config.json) inside the "
                             f"checkpoint root {checkpoint_root}, nor an absolute path to one{nearby(path, (root,))}")
        base_model = bool(spec.get("base_model", False))
        options: dict[str, Any] = {"name": f"model-{name}"}
        if gpus or spec.get("ray_actor_options") or cfg.serve.custom_resources:
            options["ray_actor_options"] = engine_options(gpus, 1, cfg.serve.custom_resources,
                                                          spec.get("ray_actor_options"))
        handles[name] = ModelServer.options(**options).bind(str(resolved), cfg_json)
        tokenizer_paths[name] = str(resolved)
        shown = path if under_root(checkpoint_root, path) is not None else Path(path).name  # no machine paths
        descriptions.append({"name": name, "checkpoint": shown, "base_model": base_model,
                             "few_shot": cfg.prompt.few_shot if base_model else 0, "engine": cfg.eval.engine.backend,
                             "max_tokens": cfg.eval.max_tokens, "max_model_len": cfg.eval.engine.max_model_len})
    checkpoints = None
    if cfg.serve.on_demand:
        # The replica only routes; each checkpoint's engine is a process of its own with these options.
        checkpoints = checkpoint_server(cfg.serve.max_models_per_replica).bind(
            checkpoint_root, cfg_json, engine_options(gpus, 1, cfg.serve.custom_resources, checkpoints_options))
    # The ingress builds its request and answer schemas when it imports the package: the tasks the
    # config declared are registered by then (advdistill.task_declaration).
    api_options = with_declared_tasks(api_options)
    # The ingress runs on the head: the job database (SQLite in serve.jobs_folder) is one node's file.
    api_options = {"num_cpus": 0.5, **(api_options or {})}
    api_options["resources"] = {HEAD_RESOURCE: 0.001, **(api_options.get("resources") or {})}
    ingress = EvaluateAPI.options(ray_actor_options=api_options)
    return ingress.bind(handles, descriptions, cfg_json, tokenizer_paths, checkpoints)
