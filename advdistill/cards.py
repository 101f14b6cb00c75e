"""Cards for what a run publishes, so each folder can go to the Hugging Face Hub as it is
(`hf upload ORG/NAME runs/tiny/train-advdistill/final`):

- a **model card**, `README.md` in a training's `final/`: base model, teacher, task and data, the
  method and its settings, evaluation results with their intervals (when a `distill.py` run
  evaluated the model), the resolved config and the license;
- a **dataset card**, `README.md` in a curation folder: what the teacher was asked and how its
  samples were scored, the columns, the counts, and the `configs:` metadata with which
  `datasets.load_dataset(FOLDER)` (or the Hub's viewer) reads `groups/` as the train split.

Each card is built from the files the stages already write (a training's `config.yaml` and
`result.json`, curation's `summary.json`, the evaluations' predictions), so `train.py`,
`curate.py` and `distill.py` write the same card. The metadata is built with huggingface_hub's
`ModelCardData`/`DatasetCardData` (the Hub's own schema, `model-index` included). Models are
named as configured (`models/tiny-student`, `Qwen/Qwen2.5-1.5B`), not by where a job's working
directory happened to unpack them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from advdistill.config import REPO, ExperimentConfig
from advdistill.preflight import cached_file, is_repo_id
from advdistill.storage import PathLike, is_uri, location
from advdistill.tasks import get_task

CARD = "README.md"
# pyproject.toml's license: what a model or dataset this repository made itself is under
# (tools/build_tiny_models.py's models carry its build_info.json; the synthetic task's generator).
REPOSITORY_LICENSE = "apache-2.0"
BUILT_HERE = "build_info.json"
LOSSES = {"advdistill": "the AdvDistill loss: a softmax of the group's advantages (temperature τ) weights each "
                        "response's cross-entropy, plus λ times a contrastive penalty on the incorrect responses",
          "sft": "supervised fine-tuning on the best response of each group (highest advantage)"}


def configured_name(model: str) -> str:
    """A model as the config named it: a folder inside the working directory or the repository
    relative to it (under `ray job submit` the working directory is the job's unpacked copy)."""
    if is_uri(model) or not Path(model).is_absolute():
        return model
    for base in (Path.cwd(), REPO):
        try:
            return str(Path(model).resolve().relative_to(base.resolve()))
        except ValueError:
            continue
    return model


def _front_matter(path: Path) -> dict[str, Any]:
    from huggingface_hub.repocard import metadata_load  # the Hub's own parser of card metadata

    try:
        return metadata_load(path) or {}
    except Exception:  # noqa: BLE001 - a malformed card says nothing about the license
        return {}


def source_license(source: str, repo_type: str = "model") -> str | None:
    """The license a model or dataset's own card states: a local folder's README.md, else the
    card in the local hub cache; this repository's license for what it built; None if unknown."""
    if is_uri(source):
        return None
    folder = Path(source) if Path(source).is_absolute() else REPO / source
    if folder.is_dir():
        if (folder / BUILT_HERE).is_file():
            return REPOSITORY_LICENSE
        return _front_matter(folder / CARD).get("license") if (folder / CARD).is_file() else None
    cached = cached_file(source, (CARD,), repo_type=repo_type)
    return _front_matter(Path(cached)).get("license") if cached else None


def stage_config(folder: PathLike) -> ExperimentConfig:
    """The config a stage ran with (its `config.yaml`); a task it declared is registered, its
    import paths are not imported (a card calls no verifier)."""
    tree = yaml.safe_load((location(folder) / "config.yaml").read_text())
    return ExperimentConfig.model_validate(tree, context={"skip_imports": True})


def verifier_description(cfg: ExperimentConfig) -> str:
    """How a curation judged and rewarded the teacher's samples, in one sentence for a card."""
    spec = get_task(cfg.curate.dataset.name)
    how = {"custom": f"its own verifier `{spec.verifier}` (time limit {spec.verifier_time_limit_s} s)",
           "regex": f"the pattern `{spec.pattern}`" if spec.pattern else "the reference as a pattern",
           "exact": "exact match after normalising", "multiple_choice": "the option letter",
           "number": "numeric equality", "math": "math-verify"}[spec.answer]
    extra = "".join(f" + {t.weight} × `{t.fn}`" for t in cfg.reward.extra)
    return (f"answer kind `{spec.answer}`: {how}; a response cut at the token limit is incorrect. Rewards: "
            f"{cfg.reward.w_cos} × cosine (length-aware correctness, L_max {cfg.reward.max_len}) + {cfg.reward.w_fmt} × "
            f"format{extra}; advantages group-relative (ε {cfg.advantage.eps}).")


def dataset_license(cfg: ExperimentConfig, teacher: str) -> tuple[dict[str, Any], str]:
    """(card metadata, the card's license section) of data the teacher wrote on the curation's
    questions: this repository's license when both the questions (the built-in generator) and the
    teacher were made here; else `other`, naming whose terms apply."""
    ds, spec = cfg.curate.dataset, get_task(cfg.curate.dataset.name)
    source = spec.hub_id if spec.hub_id and not ds.path else None
    built_here = not source and not ds.path and source_license(teacher) == REPOSITORY_LICENSE
    what = ("the source data and the teacher (both made by this repository)" if built_here else
            f"the source data ({source or ds.path or ds.name}) and the teacher `{teacher}`, whose terms both apply")
    return _license_fields(REPOSITORY_LICENSE if built_here else None, what)


def _read_json(loc: PathLike) -> dict[str, Any] | None:
    return json.loads(loc.read_text()) if loc.is_file() else None


def _license_fields(license_id: str | None, what: str) -> tuple[dict[str, Any], str]:
    """(metadata, the card's license section)."""
    if license_id:
        return {"license": license_id}, f"`{license_id}`, the license of {what}."
    return ({"license": "other", "license_name": "unknown", "license_link": "LICENSE"},
            f"Unknown: this run found no license stated for {what}. Set `license` in the metadata above "
            f"(and add the LICENSE file it links) before publishing.")


def _hub_id(source: str) -> str | None:
    """`source` when it is a hub id (the Hub's `base_model` takes only those), else None."""
    local = Path(source).is_absolute() or (Path.cwd() / source).exists() or (REPO / source).exists()
    return source if not is_uri(source) and not local and is_repo_id(source) else None


def dataset_source(cfg: ExperimentConfig) -> str:
    ds, spec = cfg.curate.dataset, get_task(cfg.curate.dataset.name)
    where = f"the file `{ds.path}`" if ds.path else (f"`{spec.hub_id}`" if spec.hub_id else "the built-in generator")
    limit = f", its first {ds.limit} records" if ds.limit else ""
    return f"`{ds.name}` split `{ds.split}` ({where}{limit})"


def _settings(cfg: ExperimentConfig, result: dict[str, Any]) -> list[str]:
    t, s = cfg.train, cfg.curate.sampling
    rows = [f"- method: `{t.method}`, {LOSSES.get(t.method, 'see advdistill/methods.py')}"]
    if t.method == "advdistill":
        rows.append(f"- loss: τ = {t.loss.tau}, λ = {t.loss.lam}, δ = {t.loss.delta}")
    rows += [f"- teacher samples: K = {s.n} per prompt, temperature {s.temperature}, top-p {s.top_p}, at most "
             f"{s.max_tokens} tokens; rewards {cfg.reward.w_cos} × cosine + {cfg.reward.w_fmt} × format",
             f"- optimizer: AdamW, learning rate {t.learning_rate}, weight decay {t.weight_decay}, warm-up ratio "
             f"{t.warmup_ratio}, cosine schedule, gradient clipping {t.max_grad_norm}",
             f"- {t.epochs} epochs, {t.groups_per_step} groups per optimizer step, at most {t.max_seq_len} tokens "
             f"per sequence, seed {t.seed}" + (f", LoRA rank {t.lora.r} (merged)" if t.lora.r else ""),
             f"- weights exported in `{result.get('export_dtype', t.export_dtype)}` (`train.export_dtype`: "
             f"{t.export_dtype})"]
    if "train_groups" in result:
        rows.append(f"- trained on {result['train_groups']} groups, {result['val_groups']} held out for validation "
                    f"(`train.val_fraction` {result.get('val_fraction', t.val_fraction)}); "
                    f"{result.get('truncated_responses', 0)} responses cut at `max_seq_len`; final validation loss "
                    f"{result.get('val_loss', 'n/a')}")
    return rows


def model_card(train_folder: PathLike, evaluations: dict[str, dict[str, dict[str, Any]]] | None = None,
               curation: dict[str, Any] | None = None, name: str | None = None,
               labels: dict[str, str] | None = None) -> str:
    """The README.md of `train_folder/final` (a `TrainOutput` folder). `evaluations[model][split]`
    = {accuracy, low, high, n, clusters}, this model's row named `name`, each row labelled by
    `labels` (else its key); `curation` = the groups' summary.json."""
    from huggingface_hub import EvalResult, ModelCardData

    folder = location(train_folder)
    cfg = stage_config(folder)
    result = _read_json(folder / "result.json") or {}
    student = configured_name(result.get("student") or cfg.student)
    teacher = configured_name((curation or {}).get("teacher") or cfg.teacher)
    name = name or folder.name.removeprefix("train-")
    license_meta, license_text = _license_fields(source_license(student), f"the base model `{student}`")
    evals = (evaluations or {}).get(name, {})
    spec = get_task(cfg.curate.dataset.name)
    results = [EvalResult(task_type="text-generation", dataset_type=spec.hub_id or cfg.curate.dataset.name,
                          dataset_name=split, dataset_split=split.rsplit("-", 1)[-1], metric_type="accuracy",
                          metric_name="accuracy (greedy, %)", metric_value=round(100 * e["accuracy"], 2))
               for split, e in evals.items()]
    data = ModelCardData(base_model=_hub_id(student), library_name="transformers", pipeline_tag="text-generation",
                         tags=["advdistill", "distillation", "reasoning", cfg.train.method],
                         datasets=[spec.hub_id] if spec.hub_id and not cfg.curate.dataset.path else None,
                         model_name=f"{Path(student).name}-{name}", eval_results=results or None, **license_meta)
    if data.base_model:
        data.base_model_relation = "finetune"
    sections = [
        f"---\n{data.to_yaml()}\n---",
        f"# {Path(student).name}, distilled from {Path(teacher).name} ({cfg.train.method})",
        f"`{student}` fine-tuned with {LOSSES.get(cfg.train.method, cfg.train.method)}, on the responses "
        f"the teacher `{teacher}` gave to {dataset_source(cfg)}, scored by rule-based verifiers "
        f"(the method: `docs/method.md` of the advdistill repository). Answers follow the template "
        f"`<think>…</think><answer>…\\boxed{{…}}</answer>`.",
        "## Training", "\n".join(_settings(cfg, result)),
        "## Evaluation", _evaluation_table(evaluations or {}, name, labels or {}),
        "## Use", _usage(cfg),
        "## Config", "The resolved config of this training (`config.yaml` beside `final/`):",
        "```yaml\n" + (folder / "config.yaml").read_text().rstrip() + "\n```",
        "## License", license_text,
    ]
    return "\n\n".join(sections) + "\n"


def _evaluation_table(evaluations: dict[str, dict[str, dict[str, Any]]], name: str, labels: dict[str, str]) -> str:
    if name not in evaluations:
        return ("Not evaluated with this training (`ray_jobs/distill.py` evaluates its models and writes the "
                "results here; `ray_jobs/evaluate.py --model final/` measures one).")
    splits = list(dict.fromkeys(s for per in evaluations.values() for s in per))
    lines = ["Greedy decoding; accuracy in % with its 95% cluster-bootstrap interval (related items resampled "
             "together) and the items it rests on.", "",
             "| model | " + " | ".join(splits) + " |", "|---" * (len(splits) + 1) + "|"]
    for model, per in evaluations.items():
        cells = [f"{100 * e['accuracy']:.1f} [{100 * e['low']:.1f}, {100 * e['high']:.1f}] (n = {e['n']})"
                 if (e := per.get(split)) else "" for split in splits]
        label = f"**{labels.get(model, model)}** (this model)" if model == name else labels.get(model, model)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _usage(cfg: ExperimentConfig) -> str:
    return f"""```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("PATH_OR_REPO")
model = AutoModelForCausalLM.from_pretrained("PATH_OR_REPO")
messages = [{{"role": "system", "content": {cfg.prompt.system_prompt!r}}},
            {{"role": "user", "content": "Tom has 3 apples. He buys 4 more. How many apples does Tom have now?"}}]
ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
print(tokenizer.decode(model.generate(ids, max_new_tokens={cfg.eval.max_tokens}, do_sample=False)[0, ids.shape[1]:]))
```

Asked zero-shot with this system prompt, as it was trained."""


def write_model_card(train_folder: PathLike, evaluations: dict[str, dict[str, dict[str, Any]]] | None = None,
                     curation: dict[str, Any] | None = None, name: str | None = None,
                     labels: dict[str, str] | None = None) -> PathLike:
    """Write `train_folder/final/README.md` (unchanged text is not rewritten)."""
    final = location(train_folder) / "final"
    return _write(final / CARD, model_card(train_folder, evaluations, curation, name, labels))


def _write(path: PathLike, text: str) -> PathLike:
    # A card with the same text keeps its file (and its modification time) as it is.
    if not (path.is_file() and path.read_text() == text):
        path.write_text(text)
    return path


COLUMNS = [("id", "the prompt's record id (stable across runs)"), ("task", "its task (`advdistill.tasks`)"),
           ("question", "the question"), ("reference", "the reference answer (null: the question has none)"),
           ("choices", "the options of a multiple-choice question"), ("meta", "task-specific fields, JSON text"),
           ("prompt", "the prompt the teacher was given, as rendered with its tokenizer"),
           ("responses", "the teacher's K samples"), ("token_lengths", "each sample's length in teacher tokens"),
           ("finish_reasons", "`stop` (the teacher ended it) or `length` (cut at the token limit)"),
           ("correct", "each sample's verdict (math-verify behind a numeric fast path; option letters)"),
           ("format_ok", "each sample follows `<think>…</think><answer>…\\boxed{…}</answer>`"),
           ("rewards", "w_cos × cosine (length-aware correctness) + w_fmt × format"),
           ("advantages", "(reward − group mean) / (group std + ε)"),
           ("keep", "at least one correct sample (the groups/ files hold only these)"),
           ("teacher", "the teacher model"), ("sampling", "the sampling settings, JSON text")]


def _size_category(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return label
    return "n>1M"


def dataset_card(curate_folder: PathLike) -> str:
    """The README.md of a curation folder (`CurateOutput`), from its config.yaml and summary.json."""
    from huggingface_hub import DatasetCardData

    folder = location(curate_folder)
    cfg = stage_config(folder)
    summary = _read_json(folder / "summary.json") or {}
    teacher = configured_name(summary.get("teacher") or cfg.teacher)
    ds, spec = cfg.curate.dataset, get_task(cfg.curate.dataset.name)
    source = spec.hub_id if spec.hub_id and not ds.path else None
    # Outputs of the teacher on the source's questions: the source's terms bind them, the teacher's too.
    license_meta, license_text = dataset_license(cfg, teacher)
    configs = [{"config_name": "default", "data_files": [{"split": "train", "path": "groups/*.parquet"}]}]
    if (folder / "dropped").is_dir() and any(p.name.endswith(".parquet") for p in (folder / "dropped").iterdir()):
        configs.append({"config_name": "dropped", "data_files": [{"split": "train", "path": "dropped/*.parquet"}]})
    kept = int(summary.get("kept", 0))
    data = DatasetCardData(pretty_name=f"{Path(teacher).name} on {ds.name} {ds.split}: scored groups (AdvDistill)",
                           task_categories=["text-generation"], size_categories=_size_category(kept),
                           source_datasets=[source] if source else None, configs=configs,
                           tags=["advdistill", "distillation", "reasoning", "synthetic"], **license_meta)
    s = cfg.curate.sampling
    counts = (f"{summary.get('prompts_read', '?')} prompts read, {kept} groups kept (`groups/`), "
              f"{summary.get('dropped', '?')} dropped for having no correct sample (`dropped/`), "
              f"{summary.get('quarantined', 0)} input rows quarantined (`quarantine.jsonl`, with why); the teacher's "
              f"samples were correct {100 * summary.get('per_sample_accuracy', 0):.1f}% of the time and followed the "
              f"template {100 * summary.get('format_ok', 0):.1f}% of the time; "
              f"{summary.get('tokens_generated', 0):,} tokens generated.") if summary else "No summary.json yet."
    sections = [
        f"---\n{data.to_yaml()}\n---",
        f"# {data.pretty_name}",
        f"One row per prompt: the teacher `{teacher}` answered each question of {dataset_source(cfg)} "
        f"{s.n} times, and rule-based verifiers scored every answer. A row is a group: the K samples, their "
        f"verdicts, rewards and group-relative advantages, the input of AdvDistill's training (the method: "
        f"`docs/method.md` of the advdistill repository).",
        "## How it was made",
        f"- sampling: temperature {s.temperature}, top-p {s.top_p}, {f'top-k {s.top_k}' if s.top_k > 0 else 'no top-k'}, at most {s.max_tokens} new "
        f"tokens, seed {s.seed} ({cfg.curate.engine.seeding.replace('_', ' ')} seeds), the teacher prompted with "
        f"{cfg.prompt.few_shot} worked examples\n"
        f"- verifier: {verifier_description(cfg)}\n"
        f"- the cosine reward runs from {cfg.reward.correct_start} to {cfg.reward.correct_end} for a correct sample "
        f"and from {cfg.reward.wrong_start} to {cfg.reward.wrong_end} for an incorrect one as its length goes from 0 to "
        f"{cfg.reward.max_len} tokens; advantages are (reward − group mean) / (group std + ε)"
        + (", the std with Bessel's correction" if cfg.advantage.bessel else "")
        + f"\n- {counts}",
        "## Columns", "\n".join(f"- `{name}`: {text}" for name, text in COLUMNS),
        "## Load", "```python\nfrom datasets import load_dataset\n\ngroups = load_dataset(\"PATH_OR_REPO\", "
                   "split=\"train\")  # the kept groups; name=\"dropped\" for the others\n```",
        "## Config", "```yaml\n" + (folder / "config.yaml").read_text().rstrip() + "\n```",
        "## License", license_text,
    ]
    return "\n\n".join(sections) + "\n"


def write_dataset_card(curate_folder: PathLike) -> PathLike:
    """Write `curate_folder/README.md` (unchanged text is not rewritten)."""
    return _write(location(curate_folder) / CARD, dataset_card(curate_folder))


def curation_summary(groups: str | PathLike) -> dict[str, Any] | None:
    """The summary.json of the curation a groups folder (or its parent, the curation folder) is from."""
    folder = location(str(groups))
    for candidate in (folder / "summary.json", folder.parent / "summary.json"):
        if candidate.is_file():
            return json.loads(candidate.read_text())
    return None
