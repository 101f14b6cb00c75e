"""Typed configuration: every default of SPEC.md lives here, and nowhere else.

An experiment is one `ExperimentConfig`, loaded from YAML and overridden with
`--set dotted.key=value`. Values the paper does not state are marked *(choice)* as in the SPEC.
Unknown keys are errors (a typo in a YAML file must not silently fall back to a default).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

# The repository root: the embedded models and configs that relative defaults refer to.
REPO = Path(__file__).resolve().parents[1]

TASKS = ("gsm8k", "gsm_plus", "open_s1", "open_rs", "mmlu_pro", "synthetic")
Task = Literal["gsm8k", "gsm_plus", "open_s1", "open_rs", "mmlu_pro", "synthetic"]

DEFAULT_SYSTEM_PROMPT = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant "
    "solves it. The Assistant first thinks about the reasoning process and then gives the "
    "answer. The reasoning is enclosed in <think> </think> tags and the answer in "
    "<answer> </answer> tags, with the final result in \\boxed{}, i.e., "
    "<think> reasoning here </think> <answer> \\boxed{result} </answer>."
)


class Section(BaseModel):
    """Base for config sections: no unknown keys, assignment re-validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PromptConfig(Section):
    """SPEC §2: the template the models are asked to follow."""

    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    # k-shot exemplars for base models, in generation and base-model evaluation *(choice: 4)*.
    few_shot: int = Field(4, ge=0, le=16)
    # Optional JSONL of {"question", "response"[, "choices"]} exemplars replacing the built-in ones.
    exemplars_path: str | None = None


class RewardConfig(Section):
    """SPEC §4: composite reward R = w_cos * R_cos + w_fmt * R_fmt."""

    w_cos: float = 2.0
    w_fmt: float = 1.0
    # L_max: the teacher's max generation length (paper: 2048).
    max_len: int = Field(2048, gt=0)
    correct_start: float = 1.0
    correct_end: float = 0.5
    # *(choice: open-r1 magnitudes; long incorrect answers are penalised most)*
    wrong_start: float = -0.5
    wrong_end: float = -1.0


class AdvantageConfig(Section):
    """SPEC §5: group-relative advantages and softmax weights."""

    eps: float = Field(1e-4, gt=0)  # *(choice: TRL's value)*
    bessel: bool = True  # std with Bessel's correction, as TRL's GRPO *(choice)*


class LossConfig(Section):
    """SPEC §6: L = sum_i w_i CE_i + (lambda / N) sum_{i incorrect} C_i."""

    tau: float = Field(0.5, gt=0)  # softmax temperature of the advantage weights (SPEC §5)
    lam: float = Field(0.5, ge=0)
    delta: float = Field(1e-5, gt=0, lt=1)  # *(choice: the usual unlikelihood clamp)*
    # Tokens per chunk when computing log-probs without full-vocabulary logits.
    chunk_size: int = Field(1024, gt=0)


class SamplingConfig(Section):
    """SPEC §1: the teacher's sampling (K samples per prompt)."""

    n: int = Field(8, ge=1)
    temperature: float = Field(0.9, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = -1  # -1 = no top-k (vLLM's convention)
    max_tokens: int = Field(2048, gt=0)
    # Base seed; each prompt's seed is derived from it and the prompt id (reruns reproduce).
    seed: int = 0
    # Generate max_tokens every time (throughput benchmarks: fixed output lengths).
    ignore_eos: bool = False


class EngineConfig(Section):
    """How a generation engine runs: vLLM (GPU or CPU build) or the transformers fallback.

    The model is not part of it: the same settings serve every model a stage loads."""

    engine: Literal["auto", "vllm", "transformers"] = "auto"  # auto = vLLM where installed
    max_model_len: int = Field(4096, gt=0)
    tensor_parallel_size: int = Field(1, ge=1)
    dtype: str = "auto"
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1)
    enable_prefix_caching: bool = True
    # Compile/CUDA graphs cost ~20 s per start on CPU; eager is the sane default there.
    enforce_eager: bool | None = None  # None = True on CPU, False on GPU
    # Prompts handed to the engine at once (vLLM schedules them together).
    batch_size: int = Field(64, ge=1)
    # vLLM's weight loading; "dummy" = random weights from config.json alone (throughput
    # benchmarks of a real architecture where no checkpoint can be downloaded).
    load_format: Literal["auto", "safetensors", "dummy"] = "auto"


class ResourcesConfig(Section):
    """Ray resources of a stage's workers. use_gpu=None: use GPUs iff the cluster has any."""

    use_gpu: bool | None = None
    cpus_per_worker: float = Field(1, gt=0)
    min_workers: int = Field(1, ge=1)  # actor pool autoscaling bounds (curate, evaluate)
    max_workers: int | None = None  # None = as many as the cluster's GPUs (CPU: 1)


class DatasetConfig(Section):
    """A dataset split (SPEC §8), from the hub name or a local JSONL/Parquet path."""

    name: Task = "synthetic"
    split: str = "train"
    path: str | None = None  # local file with the hub's fields; None = the hub
    limit: int | None = Field(None, ge=1)
    # Seeded splits where the hub has none (open_s1, mmlu_pro) and the synthetic generator.
    seed: int = 0
    test_size: int | None = None  # None = the SPEC table's size


class CurateConfig(Section):
    dataset: DatasetConfig = DatasetConfig(split="train")
    engine: EngineConfig = EngineConfig()
    sampling: SamplingConfig = SamplingConfig()
    resources: ResourcesConfig = ResourcesConfig()
    # Seconds between progress lines (prompts done / total, tokens/s).
    progress_every_s: float = Field(10.0, gt=0)


class TrainConfig(Section):
    """SPEC §6 / paper Appendix B."""

    mode: Literal["advdistill", "sft"] = "advdistill"
    lr: float = Field(5e-6, gt=0)
    weight_decay: float = 0.01
    epochs: int = Field(4, ge=1)
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    max_grad_norm: float = Field(0.5, gt=0)
    # Groups per optimizer step, across all workers (paper: micro-batch 1 group x gradient
    # accumulation 16). It does not change with `num_workers`: each worker runs its share of the
    # step's groups, one per micro-batch, and the gradient is the mean over the step's groups.
    # An epoch has ceil(groups / groups_per_step) steps; the last one may be partial.
    groups_per_step: int = Field(16, ge=1)
    # Tokens of prompt + response; a longer response is cut to fit, and the cuts are counted and
    # reported (metrics.jsonl, result.json, the report).
    max_seq_len: int = Field(2048, gt=0)
    # Validate every N optimizer steps on held-out groups (and at each epoch's end).
    val_every: int = Field(400, ge=1)
    # Share of the kept groups held out for validation, chosen by a hash of the group id (the
    # same groups on every run, whatever the seed), before training. *(choice: the paper
    # validates every 400 steps but does not say on what; 5% keeps 95% of the groups for
    # training and still gives a few hundred validation groups on GSM8K or MMLU-Pro.)*
    # 0 = no validation split: train on every kept group.
    val_fraction: float = Field(0.05, ge=0, lt=1)
    # K' < K: train on the first K' responses, recompute their advantages and apply the keep
    # rule again (a group with no correct response among its first K' is dropped and counted):
    # the paper's 3-response ablation. None = all K.
    responses_per_group: int | None = Field(None, ge=1)
    # Pack a group as one sequence: the prompt once, then each response attending to it.
    shared_prefix_packing: bool = False
    # How a packed group attends (advdistill/train/attention.py): "segments" = per-segment SDPA,
    # only the visible scores, any device; "flex" = FlexAttention's block-sparse kernels (CUDA
    # only: torch has no FlexAttention backward on CPU); "dense" = one L x L boolean mask, every
    # score computed. "auto" = flex on GPU, segments on CPU (bench/RESULTS.md section 3).
    packed_attention: Literal["auto", "dense", "segments", "flex"] = "auto"
    # Recompute each decoder layer's forward in backward instead of keeping its activations: about
    # a third more compute for a fraction of the activation memory (docs/memory.md). On in the
    # paper configs, whose K = 8 x 2,048-token groups would not fit a 40 GB GPU without it.
    activation_checkpointing: bool = False
    num_workers: int = Field(2, ge=1)
    resources: ResourcesConfig = ResourcesConfig()
    bf16: bool = True  # mixed precision on GPU (CPU trains in fp32)
    seed: int = 0
    max_failures: int = Field(1, ge=0)
    checkpoint_every: int = Field(400, ge=1)  # optimizer steps between sharded checkpoints
    # Steps between `ray.train.report` calls (each is a round trip to the controller); every
    # step's metrics still reach metrics.jsonl with the next checkpoint.
    report_every: int = Field(1, ge=1)
    # Checkpoints kept in OUTPUT/checkpoints (each holds model + optimizer shards).
    checkpoints_to_keep: int | None = Field(2, ge=1)
    # Stop after this many optimizer steps (smoke tests, benchmarks); None = all epochs.
    max_steps: int | None = Field(None, ge=1)
    # Fault injection: raise once at this step in an attempt that did not resume (tests recovery).
    fail_at_step: int | None = Field(None, ge=1)
    loss: LossConfig = LossConfig()

    @model_validator(mode="before")
    @classmethod
    def _grad_accum_was_replaced(cls, data: Any) -> Any:
        # The old key made the step size depend on the worker count (workers x grad_accum groups).
        if isinstance(data, dict) and "grad_accum" in data:
            raise ValueError("train.grad_accum was replaced by train.groups_per_step: the number of groups per "
                             "optimizer step across all workers (paper: 16), whatever train.num_workers is")
        return data


class EvalConfig(Section):
    """SPEC §7: greedy decoding, max 2048 new tokens *(choice)*."""

    # The in-distribution test split, and the out-of-distribution sets (paper: GSM-PLUS for
    # GSM8K-trained models, OPEN-RS hard problems for OPEN-S1; none for MMLU-Pro).
    test: DatasetConfig = DatasetConfig(split="test")
    ood: list[DatasetConfig] = Field(default_factory=lambda: [DatasetConfig(split="ood")])
    temperature: float = Field(0.0, ge=0)
    max_tokens: int = Field(2048, gt=0)
    engine: EngineConfig = EngineConfig()
    resources: ResourcesConfig = ResourcesConfig()


class ServeConfig(Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, gt=0, lt=65536)
    # Folders that model names and dataset paths must stay inside.
    checkpoint_root: str = "."
    data_root: str = "."
    max_items: int = Field(2048, ge=1)
    max_tokens_limit: int = Field(4096, ge=1)
    # Env var holding the API token; unset/empty env var = no auth.
    token_env: str = "ADVDISTILL_API_TOKEN"
    start_after_run: bool = False


class ExperimentConfig(Section):
    name: str = "paper-default"
    # Hub ids or local folders. The teacher and the student base are *base* models: they get
    # `prompt.few_shot` exemplars; distilled students are asked zero-shot.
    teacher: str = "Qwen/Qwen2.5-7B"
    student: str = "Qwen/Qwen2.5-1.5B"
    # The SFT baseline trains `student` on the best response per group; these students get an
    # SFT baseline too, and a base-model evaluation (paper: Qwen/Qwen2.5-3B).
    extra_sft_students: list[str] = Field(default_factory=list)
    sft_baseline: bool = True
    prompt: PromptConfig = PromptConfig()
    reward: RewardConfig = RewardConfig()
    advantage: AdvantageConfig = AdvantageConfig()
    curate: CurateConfig = CurateConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    serve: ServeConfig = ServeConfig()

    @model_validator(mode="after")
    def _reward_len_matches_generation(self) -> "ExperimentConfig":
        # L_max is the teacher's max generation length (paper §4.1); a mismatch silently changes
        # every reward, so it is an error rather than a surprise.
        if self.reward.max_len != self.curate.sampling.max_tokens:
            raise ValueError(
                f"reward.max_len ({self.reward.max_len}) must equal curate.sampling.max_tokens "
                f"({self.curate.sampling.max_tokens}): L_max is the teacher's generation limit"
            )
        return self


class ConfigError(ValueError):
    """A config file or override that does not validate; the message says which field and why."""


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
    for text in overrides or []:
        key, value = parse_override(text)
        _set_dotted(tree, key, value)
    try:
        return ExperimentConfig.model_validate(tree)
    except ValidationError as err:
        where = f" ({path})" if path else ""
        raise ConfigError(f"invalid config{where}:\n{err}") from None


def dump_config(cfg: ExperimentConfig) -> str:
    """YAML text of a resolved config (written next to every stage's outputs)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
