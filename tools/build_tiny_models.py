"""Build the embedded tiny teacher and student (`models/tiny-teacher`, `models/tiny-student`).

    python tools/build_tiny_models.py            # tokenizer, both models, model cards
    python tools/build_tiny_models.py --task relations_v1   # the same for a relations variant:
                                                 # models/tiny-relations-v1-{teacher,student}

A tool, not library code: nothing in the package imports it.

1. A byte-level BPE tokenizer trained on the synthetic task (digits are single tokens; the
   template tags are tokens; a Qwen-style chat template), shared by both models.
2. Two `Qwen2ForCausalLM` models trained from scratch on zero-shot chat prompts of the synthetic
   train split plus bare arithmetic drills:
   - the teacher (2.3 M parameters) on the *restating* solutions (each line restates a sentence
     of the question, then computes), stopped once its greedy accuracy on the `val` split
     reaches 90%: strong but imperfect;
   - the student base (0.6 M, at most a third of the teacher) on the same solutions, stopped as
     soon as its greedy accuracy on the `val` split reaches `stop_at_val_accuracy`: it knows the
     template and some of the task, with headroom — what the teacher's demonstrations must add.
3. Both are measured (greedy accuracy on `test` and `ood`; per-sample accuracy and mixed groups
   at temperature 0.9) and the figures written into each folder's README.md (the model card).

`--task` builds the same two models, with the same settings, on a relations variant
(`advdistill.data.relations`, issue 28.4): its tokenizer, its train split (40,000 problems, whose
skeletons its `curate`, `val`, `test` and `ood` splits never use) plus the same drills.

Deterministic for a given machine: fixed seeds, fixed data order, fixed thread count.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from advdistill.config import REPO, load_config  # noqa: E402
from advdistill.data import relations  # noqa: E402
from advdistill.data.synthetic import (  # noqa: E402
    BUILD_DRILLS,
    BUILD_TRAIN_PROBLEMS,
    Difficulty,
    Style,
    arithmetic_drills,
    make_split,
)
from advdistill.evaluation.stats import wilson_interval  # noqa: E402
from advdistill.generation.base import GenerationParams, vllm_available  # noqa: E402
from advdistill.generation.factory import make_engine  # noqa: E402
from advdistill.prompts import build_prompt  # noqa: E402
from advdistill.scoring import format_reward, is_correct, judge  # noqa: E402

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TEMPLATE_TOKENS = ["<think>", "</think>", "<answer>", "</answer>", "\\boxed{"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass
class ModelSpec:
    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    steps: int  # length of the cosine schedule (and the most steps taken)
    batch_rows: int  # rows of ROW_TOKENS packed tokens per optimizer step
    lr: float
    seed: int
    style: Style = "restate"  # how its training solutions reason (see advdistill.data.synthetic)
    # Stop as soon as the greedy accuracy on `val` problems reaches this (checked every
    # `check_every` steps from `min_steps`): the student base must keep headroom, and the step
    # where it gets there depends on the machine's numerics, so it is measured, not fixed.
    stop_at_val_accuracy: float | None = None
    min_steps: int = 0
    check_every: int = 100


# The teacher stops near the paper's GSM8K teacher (88.6%): run to the end of its schedule it
# reaches 98% greedy, and 88% of its sampled groups are then all correct — nothing for the
# advantages and the contrastive term to work with.
TEACHER = ModelSpec("tiny-teacher", hidden=192, layers=4, heads=6, kv_heads=2, intermediate=768,
                    steps=2000, batch_rows=12, lr=3e-3, seed=1, style="restate",
                    stop_at_val_accuracy=0.9, min_steps=1000, check_every=50)
# The student reasons in the teacher's style. Trained on terse solutions instead, distillation
# made it worse (12.7% -> 10.9% SFT, 8.8% AdvDistill on 1,000 test items): it copied the
# restating form without the ability to restate correctly (bench/RESULTS.md, reproduction).
STUDENT = ModelSpec("tiny-student", hidden=96, layers=4, heads=3, kv_heads=1, intermediate=384,
                    steps=1500, batch_rows=12, lr=3e-3, seed=2, style="restate",
                    stop_at_val_accuracy=0.2, min_steps=300, check_every=50)


def train_tokenizer(texts: list[str], vocab_size: int, out: Path):
    """Byte-level BPE (any text encodes), digits split into single tokens, template tags whole."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    # Not "special": vLLM and transformers skip special tokens when decoding, and the template
    # tags must survive into the response text.
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TEMPLATE_TOKENS])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=["<|im_start|>"],
        chat_template=CHAT_TEMPLATE,
        model_max_length=1024,
    )
    fast.save_pretrained(out)
    return fast


def encode_examples(tokenizer, prompts: list[str], responses: list[str]) -> list[tuple[list[int], int]]:
    """(prompt + response + EOS ids, prompt length) per example."""
    p_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    r_ids = tokenizer(responses, add_special_tokens=False)["input_ids"]
    return [(p + r + [tokenizer.eos_token_id], len(p)) for p, r in zip(p_ids, r_ids)]


ROW_TOKENS = 512  # training rows are packed to this length


def packed_batches(examples: list[tuple[list[int], int]], rows: int, pad_id: int, rng: random.Random):
    """Endless batches of `rows` rows of ROW_TOKENS tokens, examples packed whole into rows
    (no padding waste, one shape); loss only on response tokens. Examples attend to earlier
    ones in their row, which the model learns to ignore (standard pretraining packing)."""
    order: list[int] = []
    while True:
        input_ids = torch.full((rows, ROW_TOKENS), pad_id, dtype=torch.long)
        labels = torch.full((rows, ROW_TOKENS), -100, dtype=torch.long)
        for row in range(rows):
            used = 0
            while True:
                if not order:
                    order = list(range(len(examples)))
                    rng.shuffle(order)
                ids, prompt_len = examples[order[-1]]
                if used + len(ids) > ROW_TOKENS:
                    break
                order.pop()
                input_ids[row, used : used + len(ids)] = torch.tensor(ids)
                labels[row, used + prompt_len : used + len(ids)] = torch.tensor(ids[prompt_len:])
                used += len(ids)
        yield input_ids, labels


@torch.no_grad()
def greedy_accuracy(model, tokenizer, prompts: list[str], references: list[str], max_tokens: int,
                    batch: int = 100, task: str = "synthetic") -> float:
    """Greedy accuracy (batched transformers `generate`): the early-stopping signal."""
    model.eval()
    tokenizer.padding_side = "left"
    hits = []
    for start in range(0, len(prompts), batch):
        enc = tokenizer(prompts[start : start + batch], return_tensors="pt", padding=True, add_special_tokens=False)
        out = model.generate(**enc, do_sample=False, max_new_tokens=max_tokens, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id)
        texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        hits += [is_correct(t, ref, task) for t, ref in zip(texts, references[start : start + batch])]
    model.train()
    return sum(hits) / len(hits)


def train_model(spec: ModelSpec, tokenizer, examples, out: Path, validation=None, log_every: int = 200):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(spec.seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        rope_theta=10000.0,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = Qwen2ForCausalLM(config)
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, spec.steps // 50)

    def lr_at(step: int) -> float:
        if step < warmup:
            return spec.lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, spec.steps - warmup)
        return spec.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))

    batches = packed_batches(examples, spec.batch_rows, tokenizer.pad_token_id, random.Random(spec.seed))
    model.train()
    start, running = time.time(), 0.0
    for step in range(spec.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        input_ids, labels = next(batches)
        loss = model(input_ids=input_ids, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running += loss.item()
        if (step + 1) % log_every == 0:
            print(f"[{spec.name}] step {step + 1}/{spec.steps} loss {running / log_every:.4f} "
                  f"lr {lr_at(step):.2e} {time.time() - start:.0f}s", flush=True)
            running = 0.0
        if (spec.stop_at_val_accuracy is not None and validation and step + 1 >= spec.min_steps
                and (step + 1) % spec.check_every == 0):
            accuracy = greedy_accuracy(model, tokenizer, *validation)
            print(f"[{spec.name}] step {step + 1}: greedy accuracy on val {accuracy:.3f}", flush=True)
            if accuracy >= spec.stop_at_val_accuracy:
                stopped_at = step + 1
                break
    else:
        stopped_at = spec.steps
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = None
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return {"parameters": params, "train_seconds": round(time.time() - start, 1), "steps_taken": stopped_at}


def task_split(task: str, split: str, n: int, style: Style = "restate") -> list[dict]:
    """The first n records of a split of the synthetic task or of a relations variant (seed 0)."""
    if task == "synthetic":
        return make_split(split, n, seed=0, style=style)
    return relations.make_split(task, split, n, seed=0)


def measure(model_dir: Path, cfg, n_problems: int, samples: int, task: str = "synthetic") -> dict:
    """On `test` and `ood`: greedy accuracy (how the pipeline evaluates), and at temperature 0.9
    with `samples` samples per problem (how curation samples) the per-sample accuracy, the share
    of mixed groups (some samples right, some wrong) and the template rate."""
    engine = make_engine(str(model_dir), cfg.curate.engine)
    greedy = GenerationParams(n=1, temperature=0.0, max_tokens=cfg.curate.sampling.max_tokens)
    sampled = GenerationParams(n=samples, temperature=0.9, top_p=1.0, max_tokens=cfg.curate.sampling.max_tokens)
    result = {}
    for split in ("test", "ood"):
        records = task_split(task, split, n_problems)
        prompts = [build_prompt(engine.tokenizer, r, few_shot=0, prompt_cfg=cfg.prompt) for r in records]
        greedy_hits = [judge(outs[0].text, outs[0].finish_reason, r["reference"], task).correct
                       for r, outs in zip(records, engine.generate(prompts, greedy))]
        outputs = engine.generate(prompts, sampled, seeds=list(range(len(prompts))))
        correct, mixed, fmt, by_type = 0, 0, 0, {}
        for record, outs, hit in zip(records, outputs, greedy_hits):
            k = sum(judge(o.text, o.finish_reason, record["reference"], task).correct for o in outs)
            correct += k
            mixed += 0 < k < samples
            fmt += sum(format_reward(o.text) for o in outs)
            kind = record["meta"].get("perturbation_type")
            if kind:
                by_type.setdefault(kind, []).append(hit)
        interval = wilson_interval(greedy_hits)
        total = len(records) * samples
        result[split] = {
            "greedy_accuracy": round(interval.value, 4),
            "greedy_accuracy_interval": [round(interval.low, 4), round(interval.high, 4)],
            "per_sample_accuracy": round(correct / total, 4),
            "mixed_groups": round(mixed / len(records), 4),
            "template_followed": round(fmt / total, 4),
        }
        if by_type:
            result[split]["greedy_by_perturbation"] = {k: round(sum(v) / len(v), 4) for k, v in sorted(by_type.items())}
    del engine
    return result


def model_card(folder: Path, role: str, vocab: int, threads: int, samples: int, n_problems: int, engine: str,
               task: str = "synthetic") -> str:
    """README.md of a built model, from its build_info.json."""
    info = json.loads((folder / "build_info.json").read_text())
    spec, metrics = info["spec"], info["metrics"]
    solutions = (f"*{spec['style']}* solutions (`advdistill.data.synthetic`)" if task == "synthetic" else
                 f"its reference solutions (`advdistill.data.relations`; the `curate`, `val`, `test` and `ood` "
                 f"splits use no skeleton of `train`)")
    source = ("`advdistill.data.synthetic.make_split(...)`" if task == "synthetic"
              else f"`advdistill.data.relations.make_split({task!r}, ...)`")
    stopping = (f"; training stopped at the first check (every {spec['check_every']} steps from step "
                f"{spec['min_steps']}) where the greedy accuracy on 200 `val` problems reached "
                f"{spec['stop_at_val_accuracy']}" if spec["stop_at_val_accuracy"] is not None else "")
    return f"""# {spec['name']}

A tiny `Qwen2ForCausalLM` ({info['parameters']:,} parameters: hidden {spec['hidden']}, {spec['layers']} layers,
{spec['heads']} heads, {spec['kv_heads']} KV heads, intermediate {spec['intermediate']}) trained from scratch
for AdvDistill's embedded default run. {role}

## How it was made

`python tools/build_tiny_models.py` (this repository): a byte-level BPE tokenizer
(vocabulary {vocab}, digits as single tokens, the template tags as tokens) trained on the
{task} task, then {info['steps_taken']} AdamW steps ({spec['batch_rows']} packed rows of 512
tokens per step, peak lr {spec['lr']}, a cosine schedule over {spec['steps']} steps, seed
{spec['seed']}{stopping}) on zero-shot chat prompts of the {task} train split, with
{solutions}, plus arithmetic drills:
{info['train_seconds']:.0f} s on {threads} CPU threads. The prompt is the `prompt.system_prompt`
of `configs/tiny.yaml`.

## Measured accuracy

{n_problems} `test` and {n_problems} `ood` problems ({source}, seed 0), engine `{engine}`: greedy accuracy (with its 95% Wilson interval, and per GSM-PLUS-style
perturbation on `ood`), and at temperature 0.9, top-p 1.0, no top-k, {samples} samples per problem,
the per-sample accuracy, the share of mixed groups (some samples right, some wrong) and the share
of samples in the template. A response cut at the token limit counts as incorrect.

```json
{json.dumps(metrics, indent=2)}
```

Not a useful model for anything but exercising the pipeline on a CPU.
"""


ROLES = {
    "teacher": ("The teacher: it reasons by restating each sentence of the question before computing, "
                "and is strong but imperfect — its samples at temperature 0.9 leave mixed groups to learn from."),
    "student": ("The student base: at most a third of the teacher's parameters, trained like the teacher "
                "but stopped early, so that it follows the template and solves some problems but has "
                "headroom — what distillation from the teacher must add."),
}


def training_examples(tokenizer, records: list[dict], drills: list[tuple[str, str]], cfg) -> list[tuple[list[int], int]]:
    prompts = [build_prompt(tokenizer, r, few_shot=0, prompt_cfg=cfg.prompt) for r in records]
    prompts += [build_prompt(tokenizer, {"task": "synthetic", "question": q}, few_shot=0, prompt_cfg=cfg.prompt)
                for q, _ in drills]
    responses = [r["meta"]["solution"] for r in records] + [a for _, a in drills]
    return encode_examples(tokenizer, prompts, responses)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / "models"), help="folder for tiny-teacher/ and tiny-student/")
    parser.add_argument("--config", default=str(REPO / "configs" / "tiny.yaml"), help="the prompt and sampling settings")
    parser.add_argument("--train-problems", type=int, default=BUILD_TRAIN_PROBLEMS,
                        help="the first N train problems (the `curate` split avoids their skeletons: keep the default)")
    parser.add_argument("--drills", type=int, default=BUILD_DRILLS)
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--teacher-steps", type=int, default=TEACHER.steps)
    parser.add_argument("--student-steps", type=int, default=STUDENT.steps)
    parser.add_argument("--eval-problems", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=["teacher", "student"], default=None, help="build one model (tokenizer is rebuilt)")
    parser.add_argument("--task", choices=["synthetic", *relations.VARIANTS], default="synthetic",
                        help="the task the models learn (a relations variant: models/tiny-<variant>-{teacher,student})")
    parser.add_argument("--skip-eval", action="store_true")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    out = Path(args.out)
    difficulty = Difficulty()
    drills = arithmetic_drills(args.drills, seed=0, difficulty=difficulty)
    if args.task == "synthetic":
        by_style = {style: make_split("train", args.train_problems, seed=0, difficulty=difficulty, style=style)
                    for style in ("restate", "terse")}
    else:  # one style of solution
        by_style = {"restate": relations.make_split(args.task, "train", args.train_problems, seed=0)}

    tok_dir = Path(tempfile.mkdtemp(prefix="advdistill-tokenizer-"))
    corpus = [r["question"] + "\n" + r["meta"]["solution"] for records in by_style.values() for r in records[:10000]]
    corpus += [q + "\n" + a for q, a in drills] + [cfg.prompt.system_prompt] * 100
    tokenizer = train_tokenizer(corpus, args.vocab, tok_dir)
    print(f"vocabulary {len(tokenizer)}", flush=True)

    # Early stopping looks at `val` problems only, never at the measured test/ood splits.
    held_out = task_split(args.task, "val", 200)
    validation = ([build_prompt(tokenizer, r, few_shot=0, prompt_cfg=cfg.prompt) for r in held_out],
                  [r["reference"] for r in held_out], cfg.curate.sampling.max_tokens, 100, args.task)

    specs = {"teacher": TEACHER, "student": STUDENT}
    if args.task != "synthetic":  # the same settings, another task: its own folders
        specs = {role: replace(spec, name=f"tiny-{args.task.replace('_', '-')}-{role}") for role, spec in specs.items()}
    specs["teacher"].steps, specs["student"].steps = args.teacher_steps, args.student_steps

    for role, spec in specs.items():
        if args.only and role != args.only:
            continue
        folder = out / spec.name
        examples = training_examples(tokenizer, by_style[spec.style], drills, cfg)
        print(f"[{spec.name}] {len(examples)} examples ({spec.style} solutions), mean "
              f"{sum(len(e[0]) for e in examples) / len(examples):.0f} tokens", flush=True)
        info = train_model(spec, tokenizer, examples, folder, validation=validation)
        metrics = {} if args.skip_eval else measure(folder, cfg, args.eval_problems, args.samples, args.task)
        print(json.dumps({spec.name: metrics}, indent=1), flush=True)
        (folder / "build_info.json").write_text(json.dumps({"spec": asdict(spec), "task": args.task, **info,
                                                            "metrics": metrics}, indent=2))
        text = ROLES[role] if args.task == "synthetic" else ROLES[role].replace(
            "it reasons by restating each sentence of the question before computing, and", "it")
        (folder / "README.md").write_text(model_card(folder, text, len(tokenizer), args.threads, args.samples,
                                                     args.eval_problems, "vllm" if vllm_available() else "transformers",
                                                     args.task))


if __name__ == "__main__":
    main()
