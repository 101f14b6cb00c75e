"""Curated groups as datasets the rest of the ecosystem trains on as they are (issue 29.3):
TRL's own formats, one Parquet file plus a dataset card that `datasets.load_dataset(FOLDER)`
reads (`ray_jobs/export.py`).

    sft         prompt, completion           TRL SFTTrainer (conversational prompt-completion)
    preference  prompt, chosen, rejected     TRL DPOTrainer (conversational preference)
    rewarded    prompt, responses, rewards, advantages, correct, reference
                                             one row per group: TRL GRPOTrainer takes it as its
                                             prompt set (the other columns reach reward functions
                                             as keyword arguments); offline methods read the
                                             teacher's scored samples

Every format has the group's `id`. The prompt is the conversation the distilled student is asked
(the config's system prompt and the question, zero-shot, as `advdistill.prompts` builds it); a
completion is one assistant turn. Choices, stated in the card:
- sft: `best` (default) = each kept group's correct response with the highest reward (the first
  on a tie: the SFT baseline's choice); `correct` = every correct response of the group.
- preference: within a group, its correct responses from the highest reward down are paired with
  its incorrect responses from the highest reward down (the most convincing wrong answer first),
  each response in at most one pair: min(#correct, #incorrect) pairs per group, at most
  `max_pairs` of them. A group with no incorrect response gives none.
- rewarded: every kept group, all K samples, the rewards and advantages curation computed.
Only kept groups (`groups/`) are exported: the dropped ones have no correct response.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from advdistill.cards import configured_name, dataset_license, stage_config, verifier_description
from advdistill.config import ExperimentConfig
from advdistill.curate.store import CurateOutput, read_shards
from advdistill.prompts import build_messages
from advdistill.tasks import get_task

Format = Literal["sft", "preference", "rewarded"]
FORMATS: tuple[str, ...] = ("sft", "preference", "rewarded")
DATA_FILE = "train.parquet"
TRAINERS = {"sft": "SFTTrainer", "preference": "DPOTrainer", "rewarded": "GRPOTrainer (prompt set)"}
_GROUP_COLUMNS = ["id", "question", "reference", "choices", "task", "responses", "finish_reasons", "correct", "rewards",
                  "advantages"]


def curation_config(curate_folder: Path) -> ExperimentConfig:
    """The config curation ran with (`config.yaml` beside the groups; `advdistill.cards`)."""
    return stage_config(curate_folder)


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def sft_rows(group: dict[str, Any], prompt: list[dict[str, str]], responses: str = "best") -> list[dict[str, Any]]:
    correct = [i for i, ok in enumerate(group["correct"]) if ok]
    if responses == "best" and correct:
        correct = [max(correct, key=lambda i: (group["rewards"][i], -i))]
    return [{"id": group["id"], "prompt": prompt, "completion": _assistant(group["responses"][i])} for i in correct]


def preference_rows(group: dict[str, Any], prompt: list[dict[str, str]], max_pairs: int | None = None
                    ) -> list[dict[str, Any]]:
    def by_reward(indices: list[int]) -> list[int]:
        return sorted(indices, key=lambda i: (-group["rewards"][i], i))

    right = by_reward([i for i, ok in enumerate(group["correct"]) if ok])
    wrong = by_reward([i for i, ok in enumerate(group["correct"]) if not ok])
    pairs = list(zip(right, wrong))[:max_pairs]
    return [{"id": group["id"], "prompt": prompt, "chosen": _assistant(group["responses"][c]),
             "rejected": _assistant(group["responses"][r])} for c, r in pairs]


def rewarded_rows(group: dict[str, Any], prompt: list[dict[str, str]]) -> list[dict[str, Any]]:
    return [{"id": group["id"], "prompt": prompt, "responses": list(group["responses"]),
             "rewards": list(group["rewards"]), "advantages": list(group["advantages"]),
             "correct": list(group["correct"]), "reference": group["reference"]}]


def export(curate_folder: str | Path, fmt: Format, output: str | Path, *, sft_responses: str = "best",
           max_pairs: int | None = None) -> dict[str, Any]:
    """Write the kept groups of `curate_folder` in format `fmt` to `output` (train.parquet and
    README.md); returns the counts the card states."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: one of {', '.join(FORMATS)}")
    if sft_responses not in ("best", "correct"):
        raise ValueError(f"sft responses {sft_responses!r}: best or correct")
    curate_folder, output = Path(curate_folder), Path(output)
    store = CurateOutput(curate_folder)
    table = read_shards(store.groups, _GROUP_COLUMNS)
    if table is None:
        raise ValueError(f"{curate_folder} has no kept groups (groups/*.parquet): curate first")
    cfg = curation_config(curate_folder)
    groups = sorted(table.to_pylist(), key=lambda g: g["id"])
    rows: list[dict[str, Any]] = []
    for group in groups:
        prompt = build_messages(group, few_shot=0, system_prompt=cfg.prompt.system_prompt)
        if fmt == "sft":
            rows += sft_rows(group, prompt, sft_responses)
        elif fmt == "preference":
            rows += preference_rows(group, prompt, max_pairs)
        else:
            rows += rewarded_rows(group, prompt)
    if not rows:
        raise ValueError(f"no {fmt} rows: none of the {len(groups)} kept groups has what the format needs")
    output.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), output / DATA_FILE)
    counts = {"rows": len(rows), "groups_kept": len(groups), "groups_used": len({r["id"] for r in rows})}
    (output / "README.md").write_text(card(cfg, store, fmt, counts, sft_responses, max_pairs, curate_folder))
    return counts


def _summary(store: CurateOutput) -> dict[str, Any]:
    return json.loads(store.summary.read_text()) if store.summary.is_file() else {}


def card(cfg: ExperimentConfig, store: CurateOutput, fmt: str, counts: dict[str, Any], sft_responses: str,
         max_pairs: int | None, source: Path) -> str:
    from huggingface_hub import DatasetCardData  # the Hub's own card metadata schema

    license_meta, license_text = dataset_license(cfg, configured_name(_summary(store).get("teacher") or cfg.teacher))
    data = DatasetCardData(tags=["advdistill", "trl", fmt, "distillation"],
                           configs=[{"config_name": "default", "data_files": [{"split": "train", "path": DATA_FILE}]}],
                           **license_meta)
    summary, s = _summary(store), cfg.curate.sampling
    rule = {"sft": "each kept group's correct response with the highest reward (first on a tie)" if sft_responses == "best"
            else "every correct response of each kept group",
            "preference": "within a group, correct responses from the highest reward down paired with incorrect ones "
                          "from the highest reward down, each response in at most one pair"
                          + (f", at most {max_pairs} pairs per group" if max_pairs else ""),
            "rewarded": "one row per kept group: all its samples with their rewards, advantages and verdicts"}[fmt]
    columns = {"sft": "`id`, `prompt` (system + user turns), `completion` (one assistant turn)",
               "preference": "`id`, `prompt`, `chosen`, `rejected` (one assistant turn each)",
               "rewarded": "`id`, `prompt`, `responses` (the teacher's samples, texts), `rewards`, `advantages`, `correct`, `reference`"}[fmt]
    lines = [
        "---", data.to_yaml(), "---", "",
        f"# {cfg.curate.dataset.name}: {fmt} data distilled from {cfg.teacher}", "",
        f"Exported by advdistill (`ray_jobs/export.py --format {fmt}`) from the curation in `{source}`, for TRL's "
        f"`{TRAINERS[fmt]}` as it is (TRL's conversational format).", "",
        f"- **Teacher**: `{cfg.teacher}`, {s.n} samples per prompt, temperature {s.temperature}, top-p {s.top_p}, "
        f"top-k {s.top_k}, at most {s.max_tokens} tokens, seed {s.seed} ({cfg.curate.engine.seeding} seeding).",
        f"- **Prompts**: `{cfg.curate.dataset.name}` split `{cfg.curate.dataset.split}`"
        f"{f' (first {cfg.curate.dataset.limit})' if cfg.curate.dataset.limit else ''}; the student's prompt is the "
        "system prompt and the question, zero-shot.",
        f"- **Verifier**: {verifier_description(cfg)}",
        f"- **Rows**: {rule}. Columns: {columns}.",
        f"- **Counts**: {counts['rows']} rows from {counts['groups_used']} of {counts['groups_kept']} kept groups"
        + (f"; curation read {summary['prompts_read']} prompts, kept {summary['kept']}, dropped {summary['dropped']} "
           f"(no correct sample), per-sample accuracy {summary['per_sample_accuracy']:.3f}" if summary else "") + ".",
        "", "```python", "from datasets import load_dataset",
        f'dataset = load_dataset("path/to/this/folder", split="train")  # or load_dataset("parquet", data_files=".../{DATA_FILE}")',
        "```", "", "## License", "", license_text, ""]
    return "\n".join(lines)


def write_all(curate_folder: str | Path, output: str | Path, formats: Iterable[str] = FORMATS) -> dict[str, Any]:
    """Every format, each in OUTPUT/FORMAT (a convenience for scripts)."""
    return {fmt: export(curate_folder, fmt, Path(output) / fmt) for fmt in formats}  # type: ignore[arg-type]
