"""Typed configuration: every default of SPEC.md lives here, and nowhere else.

An experiment is one `ExperimentConfig`, loaded from YAML and overridden with
`--set dotted.key=value`; code that derives a config from another does it with `with_overrides`,
which validates the result as loading does (a bare `model_copy(update=...)` would not). Every
field says what it is in its `Field(description=...)`, which `--help` prints. Values the paper
does not state are marked *(choice)* as in the SPEC. Unknown keys are errors (a typo in a YAML
file must not silently fall back to a default).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar, Literal, Mapping, Sequence

import yaml
from pydantic import (BaseModel, ConfigDict, Field, PositiveFloat, ValidationError, ValidationInfo, field_validator,
                      model_validator)

from advdistill.callables import check_signature, resolve
from advdistill.config_keys import key_error, tree_keys
from advdistill.methods import MethodName
from advdistill.task_declaration import SEEDED, declare, exported
from advdistill.tasks import AnswerKind, TaskName, get_task, task_names
from advdistill.template import DEFAULT_SYSTEM_PROMPT

# The repository root: the embedded models and configs that relative defaults refer to.
REPO = Path(__file__).resolve().parents[1]


class Section(BaseModel):
    """Base for config sections: no unknown keys, assignment re-validated. A key a section no
    longer has fails with the message naming what replaced it (`replaced`), not only as unknown."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    replaced: ClassVar[Mapping[str, str]] = {}  # old key -> the message naming its replacement

    @model_validator(mode="before")
    @classmethod
    def _no_replaced_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            old = [key for key in cls.replaced if key in data]
            if old:
                raise ValueError("; ".join(cls.replaced[key] for key in old))
        return data


class PromptConfig(Section):
    """SPEC §2: the template the models are asked to follow."""

    system_prompt: str = Field(DEFAULT_SYSTEM_PROMPT, description="system turn of every prompt (the template)")
    few_shot: int = Field(4, ge=0, le=16, description="k-shot exemplars for base models, in generation and base-model "
                                                      "evaluation *(choice: 4)*; distilled students are asked zero-shot")
    exemplars_path: str | None = Field(None, description='JSONL of {"question", "response"[, "choices"]} exemplars '
                                                         "replacing the built-in ones")


def _imports_checked(info: ValidationInfo) -> bool:
    """Whether a config's import paths are imported and checked now: not when a worker registers
    the tasks its driver exported (`declare_exported_tasks`: they import where they are called)."""
    return not (info.context or {}).get("skip_imports", False)


def _checked_function(target: str, params: tuple[str, ...], info: ValidationInfo, field: str = "") -> None:
    if _imports_checked(info):
        try:
            check_signature(resolve(target), target, params)
        except ValueError as err:
            raise ValueError(f"{field}{err}") from None


class ExtraRewardConfig(Section):
    """An extra reward term (`reward.extra`), added to the composite reward before advantages:
    weight · fn(response, record, tokens)."""

    fn: str = Field(description="import path module:function of fn(response: str, record: dict, tokens: int) -> "
                                "float (record: id, task, question, reference, choices, meta); importable where the "
                                "run starts and on every worker (ray job submit --working-dir / py_modules)")
    weight: float = Field(1.0, allow_inf_nan=False, description="the term's weight in the composite reward")

    @model_validator(mode="after")
    def _fn_imports(self, info: ValidationInfo) -> "ExtraRewardConfig":
        _checked_function(self.fn, ("response", "record", "tokens"), info)
        return self


class RewardConfig(Section):
    """SPEC §4: composite reward R = w_cos * R_cos + w_fmt * R_fmt (+ the extra terms)."""

    w_cos: float = Field(2.0, description="weight of the cosine (length-aware correctness) reward")
    w_fmt: float = Field(1.0, description="weight of the format reward")
    max_len: int | None = Field(None, gt=0, description="L_max of the cosine reward: the teacher's generation limit. "
                                                        "None = curate.sampling.max_tokens (derived); a value set "
                                                        "must equal it")
    correct_start: float = Field(1.0, description="cosine reward of a correct response of length 0")
    correct_end: float = Field(0.5, description="cosine reward of a correct response of length L_max")
    wrong_start: float = Field(-0.5, description="cosine reward of an incorrect response of length 0 "
                                                 "*(choice: open-r1 magnitudes)*")
    wrong_end: float = Field(-1.0, description="cosine reward of an incorrect (or truncated) response of length "
                                               "L_max: long incorrect answers are penalised most")
    extra: list[ExtraRewardConfig] = Field(
        default_factory=list, description="extra reward terms by import path, added to R before advantages: "
                                          "[{fn: my_pkg.rewards:brevity, weight: 0.5}], each fn(response, record, "
                                          "tokens) -> float; a term that raises adds 0 (logged once)")


class AdvantageConfig(Section):
    """SPEC §5: group-relative advantages."""

    eps: float = Field(1e-4, gt=0, description="ε in A = (R - mean) / (std + ε) *(choice: TRL's value)*")
    bessel: bool = Field(True, description="std with Bessel's correction, as TRL's GRPO *(choice)*")


class LossConfig(Section):
    """SPEC §6: L = sum_i w_i CE_i + (lambda / N) sum_{i incorrect} C_i."""

    tau: float = Field(0.5, gt=0, description="softmax temperature of the advantage weights w = softmax(A / τ)")
    lam: float = Field(0.5, ge=0, description="λ, weight of the contrastive penalty on incorrect responses")
    delta: float = Field(1e-5, gt=0, lt=1, description="δ, clamp of the mean token probability in the "
                                                       "contrastive term *(choice: the usual unlikelihood clamp)*")
    chunk_size: int = Field(1024, gt=0, description="tokens per chunk when computing log-probs without "
                                                    "full-vocabulary logits")


class SamplingConfig(Section):
    """SPEC §1: the teacher's sampling (K samples per prompt)."""

    n: int = Field(8, ge=1, description="K, responses sampled per prompt")
    temperature: float = Field(0.9, ge=0, description="sampling temperature")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling threshold")
    top_k: int = Field(-1, description="top-k sampling; -1 = none (vLLM's convention)")
    max_tokens: int = Field(2048, gt=0, description="max new tokens per response")
    seed: int = Field(0, description="base seed; each prompt's seed derives from it and the prompt id, so "
                                     "reruns reproduce")
    ignore_eos: bool = Field(False, description="generate max_tokens every time (throughput benchmarks: fixed "
                                                "output lengths)")


class EndpointConfig(Section):
    """A teacher behind an OpenAI-compatible server (vLLM's or SGLang's `serve`, a hosted API),
    used with `backend: openai`. Prompts are rendered here with the teacher's tokenizer (the
    config's `teacher`: a local folder or hub id) exactly as for a local engine and sent to the
    completions API (`/v1/completions`); per-response token counts come from that tokenizer,
    the totals billed from the answers' `usage`."""

    base_url: str = Field("http://127.0.0.1:8000/v1", description="the server's OpenAI API root (ends in /v1)")
    model: str | None = Field(None, description="the model name the server knows; None = the config's teacher")
    api_key_env: str | None = Field("OPENAI_API_KEY", description="environment variable holding the API key (never "
                                                                  "the key itself); None or unset = no key")
    samples_per_request: Literal["n", "one"] = Field(
        "n", description="n: one request per prompt with n = K (vLLM, OpenAI); one: K requests of one sample each "
                         "(servers without n), seeded seed + i")
    max_concurrency: int = Field(16, ge=1, description="requests in flight at once, per generation actor")
    requests_per_second: float | None = Field(None, gt=0, description="request rate cap per actor; None = none")
    timeout_s: float = Field(300.0, gt=0, description="per request")
    max_retries: int = Field(6, ge=0, description="retries of a request on 408/409/429/5xx, timeouts and refused "
                                                  "connections, with exponential backoff (Retry-After honoured)")
    send_seed: bool = Field(True, description="send each prompt's seed (vLLM reproduces with it; hosted APIs may "
                                              "treat it as best effort)")
    server_extensions: bool = Field(True, description="send vLLM/SGLang's extra sampling fields (stop_token_ids: "
                                                      "the end-of-turn token, which a detokenized stop string "
                                                      "cannot match; top_k); off for APIs that refuse unknown fields")


class EngineConfig(Section):
    """How a generation engine runs: vLLM (GPU or CPU build), the transformers fallback, or an
    OpenAI-compatible endpoint. The model is not part of it: the same settings serve every model
    a stage loads."""

    replaced: ClassVar[Mapping[str, str]] = {"engine": "engine.engine was renamed engine.backend"}

    backend: Literal["auto", "vllm", "transformers", "openai"] = Field(
        "auto", description="auto = vLLM where installed; openai = the server in `endpoint` (a teacher you cannot "
                            "host)")
    endpoint: EndpointConfig = Field(default_factory=EndpointConfig, description="the server, for backend: openai")
    max_model_len: int = Field(4096, gt=0, description="context length (prompt + response)")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per engine")
    dtype: str = Field("auto", description="weights dtype; auto = the checkpoint's (float32 on CPUs without bf16)")
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1, description="share of GPU memory vLLM may take")
    enable_prefix_caching: bool = Field(True, description="reuse the KV cache of shared prompt prefixes")
    enforce_eager: bool | None = Field(None, description="skip compilation/CUDA graphs (~20 s per start on CPU); "
                                                         "None = True on CPU, False on GPU")
    batch_size: int = Field(64, ge=1, description="prompts handed to the engine at once (scheduled together)")
    concurrent_batches: int = Field(2, ge=1, description="batches one vLLM engine runs at once: the next batch's "
                                                         "prompts start while the last one's longest samples finish "
                                                         "(continuous feeding); 1 = one batch at a time")
    load_format: Literal["auto", "safetensors", "dummy"] = Field(
        "auto", description='vLLM weight loading; "dummy" = random weights from config.json alone (throughput '
                            "benchmarks of a real architecture without a checkpoint)")
    stall_timeout_s: float = Field(
        300.0, gt=0, description="seconds a vLLM engine step may take while requests wait before the engine counts "
                                 "as hung: its calls fail with EngineStalled and a generation actor exits, so Ray "
                                 "restarts it and its batches run again (a healthy step takes well under a second)")
    seeding: Literal["per_prompt", "per_batch"] = Field(
        "per_prompt", description="per_prompt: each sampled prompt gets a seed from sampling.seed and its id (the same "
                                  "samples on every rerun and resume, whatever batch it lands in; vLLM then samples "
                                  "seeded requests with their own generators, slower on GPU); per_batch: the engine's "
                                  "own generator (faster, but samples depend on batching: a resumed run differs)")


class ResourcesConfig(Section):
    """Ray resources of a stage's workers."""

    use_gpu: bool | None = Field(None, description="None = use GPUs iff the cluster has any at submit (a fixed "
                                                   "cluster); an autoscaling cluster needs it stated")
    cpus_per_worker: float = Field(1, gt=0, description="CPUs each worker reserves (an engine on CPU computes with "
                                                        "them)")
    min_actors: int = Field(1, ge=1, description="on a fixed cluster, actors the generation pool (curate, evaluate) "
                                                 "starts with and keeps (Ray Data adds more while batches wait, up to "
                                                 "max_actors); on an autoscaling cluster the pool asks for "
                                                 "min(max_actors, batches) actors at once, each starting as its node "
                                                 "comes up")
    max_actors: int | None = Field(
        None, ge=1, description="actors the generation pool may grow to (each holds tensor_parallel_size GPUs while "
                                "it lives). None = on a fixed cluster, one per tensor_parallel_size GPUs present at "
                                "submit (CPU: 1); on an autoscaling cluster None is an error: the GPUs present at "
                                "submit say nothing about those the autoscaler can add (README: Cluster)")
    replaced: ClassVar[Mapping[str, str]] = {
        "custom": "resources.custom was renamed resources.custom_resources",
        "min_workers": "resources.min_workers was renamed resources.min_actors (the generation pool's lower bound)",
        "max_workers": "resources.max_workers was renamed resources.max_actors (the generation pool's upper bound)"}

    @model_validator(mode="after")
    def _pool_bounds_ordered(self) -> "ResourcesConfig":
        if self.max_actors is not None and self.min_actors > self.max_actors:
            raise ValueError(f"resources.min_actors ({self.min_actors}) exceeds resources.max_actors ({self.max_actors})")
        return self

    custom_resources: dict[str, float] = Field(
        default_factory=dict, description="custom Ray resources each worker (actor, Train worker, Serve replica) "
                                          "needs, e.g. {inference: 1}: it then runs only on nodes that declare them "
                                          "(cluster.yaml's node types), and the autoscaler starts such a node for it")


class DatasetConfig(Section):
    """A dataset split (SPEC §8), from the hub name or a local JSONL/Parquet path."""

    name: TaskName = Field("synthetic", description=f"task: {', '.join(task_names())}")
    split: str = Field("train", description="split of the task (e.g. train, test; synthetic: train, val, test, ood)")
    path: str | None = Field(None, description="local JSONL/Parquet file with the source's fields; None = the hub "
                                               "(or the built-in generator)")
    limit: int | None = Field(None, ge=1, description="first N records only")
    seed: int = Field(0, description="seed of seeded train/test splits (open_s1, mmlu_pro) and of the synthetic "
                                     "generator")
    test_size: int | None = Field(None, description="test size of a seeded split; None = the SPEC table's")

    @model_validator(mode="after")
    def _split_exists(self) -> "DatasetConfig":
        splits = get_task(self.name).splits
        if self.split not in splits:
            raise ValueError(f"{self.name} has splits {sorted(splits)}, not {self.split!r}")
        return self


class CurateConfig(Section):
    dataset: DatasetConfig = Field(DatasetConfig(split="train"), description="the prompts the teacher answers")
    engine: EngineConfig = EngineConfig()
    sampling: SamplingConfig = SamplingConfig()
    resources: ResourcesConfig = ResourcesConfig()
    progress_every_s: float = Field(10.0, gt=0, description="seconds between progress lines (prompts done, "
                                                            "tokens/s)")


LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class LoraConfig(Section):
    """A LoRA student (peft; the `lora` extra): only the adapters train, under FSDP2 and either
    loss; the export is merged into a plain transformers folder (`final/`, which vLLM loads), the
    adapter itself beside it (`final/adapter/`)."""

    r: int = Field(0, ge=0, description="LoRA rank; 0 = train every weight (no LoRA)")
    alpha: float = Field(16.0, gt=0, description="LoRA scaling numerator (the update is scaled by alpha / r)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapters' input")
    target_modules: list[str] = Field(default_factory=lambda: list(LORA_TARGETS),
                                      description="module names that get adapters (Qwen2/Llama: attention and MLP "
                                                  "projections)")


class TrainConfig(Section):
    """SPEC §6 / paper Appendix B."""

    replaced: ClassVar[Mapping[str, str]] = {
        "mode": "train.mode was renamed train.method",
        # The old key made the step size depend on the worker count (workers x grad_accum groups).
        "grad_accum": "train.grad_accum was replaced by train.groups_per_step: the number of groups per optimizer "
                      "step across all workers (paper: 16), whatever train.num_workers is",
        "fail_at_step": "train.fail_at_step left the config: it is a test-only fault injection, the "
                        "ADVDISTILL_FAIL_AT_STEP environment variable (advdistill.train.loop)",
    }

    method: MethodName = Field("advdistill", description="training method (advdistill.methods): advdistill, "
                                                         "or sft (the best response per group)")
    lr: float = Field(5e-6, gt=0, description="AdamW learning rate (of every method without its own in method_lr)")
    method_lr: dict[MethodName, PositiveFloat] = Field(
        default_factory=dict, description="a training method's own learning rate, in place of lr when that method "
                                          "trains, e.g. {sft: 1e-3}; distill.py (the SFT baseline, "
                                          "extra_sft_students) and ray_jobs/train.py alike. Each method's rate is a "
                                          "choice made on the validation split (bench/fidelity.py): a method run at "
                                          "the rate tuned for another is not a fair comparison")
    weight_decay: float = Field(0.01, description="AdamW weight decay (matrices only)")
    epochs: int = Field(4, ge=1, description="passes over the training groups")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="share of steps of linear warm-up before the cosine "
                                                              "decay")
    max_grad_norm: float = Field(0.5, gt=0, description="gradient clipping norm")
    groups_per_step: int = Field(
        16, ge=1, description="groups per optimizer step across all workers (paper: micro-batch 1 group x gradient "
                              "accumulation 16), whatever num_workers is; an epoch has ceil(groups / groups_per_step) "
                              "steps, the last one may be partial")
    max_seq_len: int = Field(2048, gt=0, description="tokens of prompt + response; a longer response is cut to fit, "
                                                     "and the cuts are counted and reported")
    val_every: int = Field(400, ge=1, description="validate every N optimizer steps (and at each epoch's end)")
    val_fraction: float = Field(
        0.05, ge=0, lt=1, description="share of the kept groups held out for validation, chosen by a hash of the group "
                                      "id (the same groups on every run) before training; 0 = train on all "
                                      "*(choice: the paper validates every 400 steps but does not say on what; 5% "
                                      "still gives a few hundred validation groups on GSM8K or MMLU-Pro)*")
    responses_per_group: int | None = Field(
        None, ge=1, description="K' < K: train on the first K' responses, recompute their advantages and apply the "
                                "keep rule again (the paper's 3-response ablation); None = all K")
    shared_prefix_packing: bool = Field(False, description="pack a group as one sequence: the prompt once, then "
                                                           "each response attending to it")
    packed_attention: Literal["auto", "dense", "segments", "flex"] = Field(
        "auto", description="how a packed group attends: segments = per-segment SDPA (any device), flex = "
                            "FlexAttention (CUDA), dense = one L x L mask; auto = flex on GPU, segments on CPU "
                            "(bench/RESULTS.md section 3)")
    activation_checkpointing: bool = Field(False, description="recompute each decoder layer in backward instead of "
                                                              "keeping its activations: about a third more compute for "
                                                              "a fraction of the memory (docs/memory.md; on in the "
                                                              "paper configs)")
    num_workers: int = Field(2, ge=1, description="Ray Train workers (FSDP2 ranks)")
    resources: ResourcesConfig = ResourcesConfig()
    bf16: bool = Field(True, description="bf16 mixed precision on GPU (CPU trains in fp32)")
    export_dtype: Literal["training", "bfloat16", "float16", "float32"] = Field(
        "training", description="dtype of the exported student (final/): training = the dtype the step computes in "
                                "(bf16 on GPU with train.bf16, fp32 on CPU); stated in result.json")
    seed: int = Field(0, description="seed of the initial state and of each epoch's group order")
    max_failures: int = Field(1, ge=0, description="worker-group restarts from the latest checkpoint")
    checkpoint_every: int = Field(400, ge=1, description="optimizer steps between sharded checkpoints")
    report_every: int = Field(1, ge=1, description="steps between ray.train.report calls (every step still reaches "
                                                   "metrics.jsonl)")
    checkpoints_to_keep: int | None = Field(2, ge=1, description="checkpoints kept in OUTPUT/checkpoints")
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps; None = all epochs")
    loss: LossConfig = LossConfig()
    lora: LoraConfig = LoraConfig()

    @property
    def learning_rate(self) -> float:
        """The rate this training runs at: the method's own (method_lr), else lr."""
        return self.method_lr.get(self.method, self.lr)

    @model_validator(mode="after")
    def _steps_fill_every_worker(self) -> "TrainConfig":
        # Every worker runs as many forward/backward passes as the busiest (FSDP's collectives):
        # a step of G groups on W workers costs ceil(G / W) passes each, the surplus ones padding.
        workers, groups = self.num_workers, self.groups_per_step
        if groups % workers:
            passes = -(-groups // workers) * workers
            raise ValueError(
                f"train.groups_per_step {groups} is not a multiple of train.num_workers {workers}: every step would "
                f"run {passes} forward/backward passes for {groups} groups, {passes - groups} of them zero-weight "
                f"padding ({(passes - groups) / passes:.0%} of the training GPU time wasted); set groups_per_step to a "
                f"multiple of num_workers (e.g. {passes}) or num_workers to a divisor of {groups}")
        return self


class EvalConfig(Section):
    """SPEC §7: greedy decoding, max 2048 new tokens *(choice)*."""

    test: DatasetConfig = Field(DatasetConfig(split="test"), description="the in-distribution test split")
    ood: list[DatasetConfig] = Field(default_factory=lambda: [DatasetConfig(split="ood")],
                                     description="out-of-distribution sets (paper: GSM-PLUS for GSM8K-trained models, "
                                                 "OPEN-RS hard problems for OPEN-S1; none for MMLU-Pro)")
    temperature: float = Field(0.0, ge=0, description="0 = greedy")
    max_tokens: int = Field(2048, gt=0, description="max new tokens per response *(choice)*")
    engine: EngineConfig = EngineConfig()
    resources: ResourcesConfig = ResourcesConfig()


class ServeConfig(Section):
    replaced: ClassVar[Mapping[str, str]] = {
        "custom": "serve.custom was renamed serve.custom_resources",
        "max_tokens_limit": "serve.max_tokens_limit was renamed serve.max_request_tokens",
    }

    host: str = Field("127.0.0.1", description="HTTP address of `distill.py --serve`")
    port: int = Field(8000, gt=0, lt=65536, description="HTTP port of `distill.py --serve`")
    checkpoint_root: str = Field(".", description="folder that served model paths must stay inside")
    data_root: str = Field("data", description="data folder that dataset paths in requests must stay inside "
                                               "(relative: to the repository); never the repository itself")
    max_items: int = Field(2048, ge=1, description="items per request at most (413 beyond)")
    max_request_tokens: int = Field(4096, ge=1, description="max_tokens a request may ask for (413 beyond)")
    max_body_bytes: int = Field(8 * 2**20, ge=1024, description="request body size at most (413 beyond)")
    max_dataset_bytes: int = Field(32 * 2**20, ge=1, description="size of a dataset file a request names, at "
                                                                 "most (413 beyond)")
    load_timeout_s: float = Field(30.0, gt=0, description="time a request may spend loading its dataset "
                                                          "(504 beyond)")
    allow_hub: bool = Field(False, description="let requests load datasets from the hub by name (with "
                                               "load_timeout_s); off: only files inside data_root and built-in "
                                               "generators")
    token_env: str = Field("ADVDISTILL_API_TOKEN", description="env var holding the API bearer token; unset or "
                                                               "empty = no auth, allowed on a loopback bind only "
                                                               "(a replica on any other address refuses to start)")
    jobs_folder: str = Field("runs/evaluations", description="local folder of the evaluation jobs' SQLite database "
                                                             "(POST /evaluations: state and results; relative: to the "
                                                             "repository); every API replica must run on its node")
    max_concurrent_jobs: int = Field(2, ge=1, description="evaluation jobs running at once per API replica "
                                                          "(429 beyond)")
    job_heartbeat_s: float = Field(10.0, gt=0, description="a running job's state is written at least this "
                                                           "often; after 6 heartbeats without one, a live API replica "
                                                           "starts the job again")
    job_attempts: int = Field(3, ge=1, description="times a job may start (its replica stopped each time) before it "
                                                   "ends `interrupted`")
    on_demand: bool = Field(False, description="requests may name any model folder under checkpoint_root (loaded "
                                               "on first use, no redeploy); off: only the configured models")
    max_models_per_replica: int = Field(2, ge=1, description="on-demand checkpoints one replica keeps loaded "
                                                             "(Ray Serve model multiplexing, least recently used out)")
    evict_wait_s: float = Field(30.0, ge=0, description="a new on-demand checkpoint waits this long for the requests "
                                                        "of the engine it would evict; 503 with Retry-After beyond "
                                                        "(an engine with requests in flight is never evicted)")
    load_failure_ttl_s: float = Field(60.0, ge=0, description="a folder that failed to load as a model is answered "
                                                              "404 from memory for this long (no new load attempt)")
    gpus_per_replica: float = Field(1.0, gt=0, description="GPUs (a fraction shares one) each model replica and each "
                                                           "on-demand engine holds, where the cluster has GPUs")
    gpu_memory_utilization: float | None = Field(
        None, gt=0, le=1, description="share of a GPU's memory each served engine may take; None = "
                                      "gpus_per_replica x eval.engine.gpu_memory_utilization (at most the fraction "
                                      "of the GPU the replica holds)")
    max_request_chars: int = Field(1_000_000, ge=1, description="characters of prompt text (items' questions and "
                                                                "choices, /v1 prompts, chat messages) one request may "
                                                                "send, counted before tokenizing (413 beyond)")
    body_timeout_s: float = Field(30.0, gt=0, description="a request body must arrive whole within this many "
                                                          "seconds of the request's headers (408 beyond)")
    start_after_run: bool = Field(False, description="serve the run's checkpoints when distill.py ends")
    custom_resources: dict[str, float] = Field(
        default_factory=dict, description="custom Ray resources each model replica and on-demand engine needs "
                                          "(e.g. {serve: 1}: replicas only on the node type that declares it)")

    @model_validator(mode="after")
    def _memory_within_the_gpu_share(self) -> "ServeConfig":
        # Two replicas sharing a GPU at 0.5 each with 0.9 of its memory each would fail to start.
        share = min(1.0, self.gpus_per_replica)
        if self.gpu_memory_utilization is not None and self.gpu_memory_utilization > share:
            raise ValueError(f"serve.gpu_memory_utilization {self.gpu_memory_utilization} exceeds the GPU share each "
                             f"replica holds (serve.gpus_per_replica {self.gpus_per_replica}): give at most {share}")
        return self


class TrackingConfig(Section):
    """Experiment tracking (`advdistill.run.tracking`): one run per distill.py run, one per stage
    (MLflow: nested runs; W&B: a group)."""

    backend: Literal["auto", "mlflow", "wandb", "none"] = Field(
        "auto", description="mlflow (the tracking extra), wandb (the wandb extra; WANDB_MODE=offline writes files "
                            "under OUTPUT/wandb only), none; auto = mlflow where installed, else none")
    enabled: bool | None = Field(None, description="the old switch, kept for one release: false = backend none")
    uri: str | None = Field(None, description="MLflow tracking URI (a server: http://host:5000); None = a file "
                                              "store in the run folder, OUTPUT/mlruns")
    experiment: str = Field("advdistill", description="MLflow experiment, or W&B project, the runs go to")


class TaskSourceConfig(Section):
    """Where a declared task's rows come from: a local file or a hub dataset (exactly one)."""

    path: str | None = Field(None, description="local JSONL/Parquet file (relative: to the working directory, the "
                                               "job's --working-dir on a cluster); {split} in it stands for the "
                                               "source split, else one file holds every split")
    hub: str | None = Field(None, description="hub dataset id (org/name), loaded with datasets.load_dataset")
    config: str | None = Field(None, description="the hub dataset's configuration (subset), if it has several")
    split_map: dict[str, str] = Field(default_factory=dict, description="a source split -> the name the hub or file "
                                                                        "gives it, where they differ, e.g. {test: "
                                                                        "validation}")


class TaskFieldsConfig(Section):
    """Which column of a source row holds each record field (SPEC §8); the row's other columns are
    the record's `meta`, which the verifier, the extra reward terms and `group_by` read."""

    id: str | None = Field(None, description="column of the item's id (unique within a split); None = "
                                             "TASK-SPLIT-ROWNUMBER")
    question: str = Field("question", description="column of the question")
    answer: str = Field("answer", description="column of the reference answer (a number for answer: number, an "
                                              "option letter for multiple_choice)")
    choices: str | None = Field(None, description="column of the list of options (answer: multiple_choice)")
    cluster: str | None = Field(None, description="column naming the cluster of related items (a template, a seed "
                                                  "question) that intervals resample together; None = each item its "
                                                  "own")
    split: str = Field("split", description="column naming each row's source split, in one file that holds several")


_TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class TaskConfig(Section):
    """A task of your own, declared in the config (README "Your own task"): its name is then valid
    wherever a task is — curate.dataset.name, eval.test, eval.ood, evaluate.py --dataset, the
    report, POST /evaluate — on this machine and on every Ray worker and Serve replica."""

    name: str | None = Field(None, description="the task's name (letters, digits, _ . -; not a built-in task's); "
                                               "None = no task declared")
    source: TaskSourceConfig = TaskSourceConfig()
    fields: TaskFieldsConfig = TaskFieldsConfig()
    answer: AnswerKind | None = Field(None, description="how an answer is judged: number | math | multiple_choice | "
                                                        "exact (normalised string match) | regex (matches pattern in "
                                                        "full) | custom (verifier)")
    splits: dict[str, str | int] = Field(
        default_factory=lambda: {"train": "train", "test": "test"},
        description="our split -> the source split it is read from, e.g. {train: train, test: test}; or "
                    "{seeded_test_size: N}: one source split (source: NAME, default train) divided into train and test "
                    "by a seeded shuffle of ids, N items in test")
    verifier: str | None = Field(None, description="answer: custom only: import path module:function of "
                                                   "fn(extracted: str, reference: str, record: dict) -> bool; run in a "
                                                   "worker process, a hang (past verifier_time_limit_s) or an error "
                                                   "counts as incorrect (logged once)")
    verifier_time_limit_s: float = Field(1.0, gt=0, le=60, description="seconds the verifier may take per response")
    pattern: str | None = Field(None, description="answer: regex only: the pattern a correct answer matches in full, "
                                                  "{reference} standing for the reference; None = the reference is "
                                                  "the pattern")
    group_by: str | None = Field(None, description="column whose values break evaluation results down (the report's "
                                                   "tables, by_<column> in /evaluate)")

    @model_validator(mode="after")
    def _declaration_complete(self, info: ValidationInfo) -> "TaskConfig":
        if self.name is None:
            return self
        problems = []
        if not _TASK_NAME.fullmatch(self.name):
            problems.append(f"task.name {self.name!r}: letters, digits, _ . - only (at most 64)")
        if (self.source.path is None) == (self.source.hub is None):
            problems.append("task.source: give exactly one of path (a local JSONL/Parquet file) or hub (a dataset id)")
        if self.answer is None:
            problems.append("task.answer: say how answers are judged: number, math, multiple_choice, exact, regex or "
                            "custom")
        if (self.answer == "custom") != (self.verifier is not None):
            problems.append("task.verifier: give one (module:function) for answer: custom, and only then")
        if self.pattern is not None and self.answer != "regex":
            problems.append("task.pattern: only for answer: regex")
        if self.answer == "multiple_choice" and self.fields.choices is None:
            problems.append("task.fields.choices: answer: multiple_choice needs the column of the options")
        problems += _split_problems(self.splits)
        if self.pattern is not None:
            try:
                re.compile(self.pattern.replace("{reference}", "x"))
            except re.error as err:
                problems.append(f"task.pattern: not a regular expression ({err})")
        if problems:
            raise ValueError("; ".join(problems))
        if self.verifier is not None:
            _checked_function(self.verifier, ("extracted", "reference", "record"), info, "task.verifier: ")
        return self


def _split_problems(splits: Mapping[str, str | int]) -> list[str]:
    if SEEDED in splits:
        size, rest = splits[SEEDED], set(splits) - {SEEDED, "source"}
        if not isinstance(size, int) or size < 1 or rest:
            return [f"task.splits: {{{SEEDED}: N[, source: SPLIT]}} with N >= 1 and nothing else, got {dict(splits)}"]
        return []
    if not splits or not all(isinstance(v, str) and v for v in splits.values()):
        return [f"task.splits: our split -> its source split (names), or {{{SEEDED}: N}}; got {dict(splits)}"]
    return []


class ExperimentConfig(Section):
    replaced: ClassVar[Mapping[str, str]] = {
        "sft_lr": "sft_lr was replaced by train.method_lr: a learning rate per training method, e.g. "
                  "train.method_lr: {sft: 1e-3}, used by distill.py and ray_jobs/train.py alike",
    }

    name: str = Field("paper-default", description="experiment name (default output folder runs/<name>)")
    teacher: str = Field("Qwen/Qwen2.5-7B", description="hub id or local folder of the teacher, a base model (gets "
                                                        "prompt.few_shot exemplars)")
    student: str = Field("Qwen/Qwen2.5-1.5B", description="hub id or local folder of the student base model")
    extra_sft_students: list[str] = Field(default_factory=list,
                                          description="students that get an SFT baseline and a base-model evaluation "
                                                      "too (paper: Qwen/Qwen2.5-3B)")
    sft_baseline: bool = Field(True, description="train the SFT baseline (the best response per group) on student")
    accelerator_hour_price: float | None = Field(
        None, ge=0, description="dollars per accelerator-hour: run.json gives each stage's `dollars` and the report's "
                                "cost table a dollars column and total (docs/cluster-plan.md uses $2.50, the rate the "
                                "paper's Table 3 implies). None = no dollar figures: a price is the cluster's, not "
                                "the code's")
    # Before the sections that name tasks: fields validate in this order, so a declared task is
    # registered by the time curate.dataset.name or eval.test.name is checked.
    task: TaskConfig = Field(default_factory=TaskConfig,
                             description="a task of your own (README: Your own task), or the path of a YAML file "
                                         "holding one (relative: to the working directory)")
    prompt: PromptConfig = PromptConfig()
    reward: RewardConfig = RewardConfig()
    advantage: AdvantageConfig = AdvantageConfig()
    curate: CurateConfig = CurateConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    serve: ServeConfig = ServeConfig()
    tracking: TrackingConfig = TrackingConfig()

    @field_validator("task", mode="before")
    @classmethod
    def _task_file(cls, value: Any) -> Any:
        """`task: FILE.yaml`: the declaration in that file (under a top-level `task:` or not)."""
        if not isinstance(value, (str, Path)):
            return value
        path = Path(value)
        if not path.is_file():
            raise ValueError(f"task: {path} is not a file (relative paths are relative to the working directory)")
        loaded = yaml.safe_load(path.read_text()) or {}
        if isinstance(loaded, dict) and isinstance(loaded.get("task"), dict):
            loaded = loaded["task"]
        if not isinstance(loaded, dict):
            raise ValueError(f"task: {path} does not hold a task declaration (a mapping)")
        return loaded

    @field_validator("task", mode="after")
    @classmethod
    def _register_task(cls, task: TaskConfig) -> TaskConfig:
        if task.name is not None:
            declare(task)
        return task

    @model_validator(mode="after")
    def _reward_len_matches_generation(self) -> "ExperimentConfig":
        # L_max is the teacher's max generation length (paper §4.1): derived from it unless set, and
        # a value set that differs is an error (it would silently change every reward).
        if self.reward.max_len is None:
            self.reward.max_len = self.curate.sampling.max_tokens
            # Still derived: a copy with another max_tokens (`with_overrides`) derives it again.
            self.reward.__pydantic_fields_set__.discard("max_len")
        elif self.reward.max_len != self.curate.sampling.max_tokens:
            raise ValueError(
                f"reward.max_len ({self.reward.max_len}) must equal curate.sampling.max_tokens "
                f"({self.curate.sampling.max_tokens}): L_max is the teacher's generation limit"
            )
        return self


class ConfigError(ValueError):
    """A config file or override that does not validate; the message says which field and why."""


def declare_exported_tasks() -> None:
    """Register the tasks a parent process declared (`ADVDISTILL_TASKS`, `task_declaration`): a
    Ray worker or Serve replica imports the registry fresh. Their import paths are imported where
    they are called, not here."""
    for data in exported():
        declare(TaskConfig.model_validate(data, context={"skip_imports": True}))



def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: '{key}' is not a section")
        node = child
    node[keys[-1]] = value


def _validated(tree: dict, path: Path | None = None, overrides: Sequence[str] = ()) -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(tree)
    except ValidationError as err:
        errors = err.errors()
        # A declaration that failed leaves its task unknown to the datasets that name it: say it once.
        declared = tree.get("task", {}).get("name") if isinstance(tree.get("task"), dict) else None
        if declared and any(e["loc"][:1] == ("task",) for e in errors):
            errors = [e for e in errors if f"unknown task {declared!r}" not in e["msg"]]
        raise ConfigError("; ".join(_explained(e, path, overrides) for e in errors)) from None


def _explained(error: Mapping[str, Any], path: Path | None, overrides: Sequence[str]) -> str:
    """One pydantic error as `SOURCE: FIELD: why`, SOURCE the `--set` that gave the field its value
    (else the YAML file): a wrong override is not the file's fault."""
    loc = ".".join(str(part) for part in error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    if error["loc"] and not isinstance(error.get("input"), (dict, list)):
        message += f" (got {error['input']!r})"
    keys = {text: parse_override(text)[0] for text in overrides}
    # A section's own check (loc "train", or "" for the whole config) blames the overrides it names.
    inside = [t for t, k in keys.items() if k == loc or k.startswith(f"{loc}.") or loc.startswith(f"{k}.") or not loc]
    blamed = [t for t in inside if keys[t] in message] or ([] if not loc else inside)
    source = ", ".join(f"--set {t}" for t in blamed) or (str(path) if path else "invalid config")
    return f"{source}: {loc}: {message}" if loc else f"{source}: {message}"


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b=value` -> ("a.b", value), the value parsed as YAML (numbers, bools, lists, null)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form dotted.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load an experiment from YAML (None = all defaults) and apply `dotted.key=value` overrides."""
    tree: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping, got {type(loaded).__name__}")
        tree = loaded
        for key in tree_keys(tree):
            problem = key_error(ExperimentConfig, key)
            if problem:
                raise ConfigError(f"{path}: {problem}")
    for text in overrides or []:
        key, value = parse_override(text)
        problem = key_error(ExperimentConfig, key)
        if problem:
            raise ConfigError(f"--set {text}: {problem}")  # the argument at fault, not the YAML file
        _set_dotted(tree, key, value)
    return _validated(tree, path, overrides or ())


def with_overrides(cfg: ExperimentConfig, overrides: Mapping[str, Any]) -> ExperimentConfig:
    """A validated copy of `cfg` with `{"dotted.key": value}` changes, checked as a loaded config is:
    `with_overrides(cfg, {"train.method": "sft"})`. Raises ConfigError naming the field at fault."""
    tree = cfg.model_dump()
    if "max_len" not in cfg.reward.model_fields_set:
        del tree["reward"]["max_len"]  # derived from curate.sampling.max_tokens: derived again
    for key, value in overrides.items():
        problem = key_error(ExperimentConfig, key)
        if problem:
            raise ConfigError(f"{key}: {problem}")
        _set_dotted(tree, key, value)
    return _validated(tree)


def dump_config(cfg: ExperimentConfig) -> str:
    """YAML text of a resolved config (written next to every stage's outputs)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
