"""Curation throughput benchmark (issue: Benchmarks, target 1).

The same prompts, model and sampling (K samples per prompt, temperature 0.9, a seed per prompt),
generation and scoring, three ways, each in a fresh process, taking turns. Throughput is
marginal: every side runs cold at N prompts and at a small N0, and tokens/s is
(tokens(N) - tokens(N0)) / (seconds(N) - seconds(N0)), so engine start-up and warm-up cancel
out alike for all three (a "time after the first batch" clock does not work for ray.data.llm,
whose engine stage runs many batches at once and hands them back together):

- bare: one `vllm.LLM.generate` call over every prompt with `n=K`, then `score_group` per prompt;
- ours: the project's Ray Data pipeline (`advdistill.curate.stage.curate`, Parquet included);
- ours_one_batch (optional, `--sides ...,ours_one_batch`): ours with `curate.engine.concurrent_batches=1`,
  one blocking batch at a time as before the continuously fed engine — what feeding it buys;
- ray.data.llm: `build_processor` with each prompt row duplicated K times with its own seed (its
  only way to get K samples), then the same scoring.

Goals: ours / bare >= 0.90 at >= 2,000 prompts; ours / ray.data.llm >= 1.5.

    python bench/curation.py [--prompts 2000] [--repeats 2] [--model models/tiny-teacher]
    python bench/curation.py --model DIR --dummy-weights --ignore-eos   # see bench/random_teacher.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from common import REPO, header

SIDES = ("bare", "ours", "ray_data_llm", "ours_one_batch")


def config(args):
    from advdistill.config import load_config

    overrides = [f"teacher={args.model}", f"curate.dataset.limit={args.prompts}", f"curate.sampling.n={args.k}",
                 "curate.progress_every_s=1000", f"curate.sampling.ignore_eos={args.ignore_eos}"]
    if args.dummy_weights:
        overrides.append("curate.engine.load_format=dummy")
    if args.max_tokens:
        overrides += [f"curate.sampling.max_tokens={args.max_tokens}"]  # reward.max_len follows it
    return load_config(args.config, overrides)


def records_and_prompts(cfg):
    from transformers import AutoTokenizer

    from advdistill.data.loaders import load_records
    from advdistill.prompts import build_prompt

    tokenizer = AutoTokenizer.from_pretrained(cfg.teacher)
    records = load_records(cfg.curate.dataset).records
    return records, [build_prompt(tokenizer, r, few_shot=cfg.prompt.few_shot, prompt_cfg=cfg.prompt) for r in records]


def run_bare(cfg) -> float:
    from advdistill.curate.stage import score_curated
    from advdistill.data.loaders import load_records
    from advdistill.generation.base import GenerationParams
    from advdistill.generation.engines import VLLMEngine
    from advdistill.generation.rows import generate_rows

    start = time.perf_counter()  # prompt building too, as the other sides do
    s = cfg.curate.sampling
    engine = VLLMEngine(cfg.teacher, cfg.curate.engine, seed=s.seed, continuous=False)  # LLM.generate itself
    # one engine call over every prompt (n = K each), then the same scoring
    rows = generate_rows(engine, load_records(cfg.curate.dataset).records, GenerationParams.from_sampling(s),
                         prompt=cfg.prompt, few_shot=cfg.prompt.few_shot, seed=s.seed)
    for row in rows:
        score_curated(row, cfg)
    return sum(sum(row["token_lengths"]) for row in rows), time.perf_counter() - start


def run_ours(cfg) -> float:
    from advdistill.local_ray import init_ray
    from advdistill.curate.stage import curate

    start = time.perf_counter()
    init_ray()
    with tempfile.TemporaryDirectory() as out:
        summary = curate(cfg, out)
    return summary["tokens_generated"], time.perf_counter() - start


def run_ours_one_batch(cfg) -> float:
    from advdistill.config import with_overrides

    return run_ours(with_overrides(cfg, {"curate.engine.concurrent_batches": 1}))


def run_ray_data_llm(cfg) -> float:
    import ray
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    from advdistill.local_ray import init_ray
    from advdistill.scoring import score_group
    from advdistill.generation.base import gpu_available
    from advdistill.generation.engines import configure_vllm_cpu_env, resolve_dtype
    from advdistill.generation.rows import prompt_seed

    start = time.perf_counter()
    records, prompts = records_and_prompts(cfg)
    s, e = cfg.curate.sampling, cfg.curate.engine
    on_gpu = gpu_available()
    if not on_gpu:
        configure_vllm_cpu_env()
    init_ray(num_cpus=8)  # its four stages each hold a CPU (FIELD-NOTES): declare enough
    rows = [{"id": r["id"], "sample": k, "prompt": p, "seed": prompt_seed(s.seed, r["id"]) + k}
            for r, p in zip(records, prompts) for k in range(s.n)]
    engine_kwargs = dict(max_model_len=e.max_model_len, enable_prefix_caching=True, dtype=resolve_dtype(e.dtype, on_gpu),
                         enforce_eager=not on_gpu, load_format=e.load_format)
    if not on_gpu:
        engine_kwargs["enable_chunked_prefill"] = False
    processor = build_processor(
        vLLMEngineProcessorConfig(
            model_source=cfg.teacher, engine_kwargs=engine_kwargs, batch_size=e.batch_size * s.n,  # same sequences per engine batch
            concurrency=1, chat_template_stage=False, tokenize_stage=True, detokenize_stage=True,
            placement_group_config=None if on_gpu else {"bundles": [{"CPU": 1}]},
            runtime_env={"env_vars": {k: os.environ[k] for k in ("VLLM_CPU_KVCACHE_SPACE", "VLLM_ENABLE_V1_MULTIPROCESSING") if k in os.environ}},
        ),
        preprocess=lambda row: dict(row, sampling_params=dict(temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens,
                                                              ignore_eos=s.ignore_eos, seed=row["seed"])),
        postprocess=lambda row: {"id": row["id"], "sample": row["sample"], "text": row["generated_text"],
                                 "tokens": row["num_generated_tokens"]},
    )
    by_id: dict[str, list] = {}
    tokens = 0
    for batch in processor(ray.data.from_items(rows)).iter_batches(batch_size=None, batch_format="pyarrow"):
        part = batch.to_pylist()
        tokens += sum(r["tokens"] for r in part)
        for row in part:
            by_id.setdefault(row["id"], []).append(row)
    reference = {r["id"]: r for r in records}
    for pid, outs in by_id.items():  # the same scoring as the other two sides
        outs.sort(key=lambda o: o["sample"])
        score_group([o["text"] for o in outs], [o["tokens"] for o in outs], ["stop"] * len(outs),
                    reference[pid]["reference"], reference[pid]["task"], cfg.reward, cfg.advantage)
    return tokens, time.perf_counter() - start


def shown(path: str) -> str:
    return os.path.relpath(path, REPO) if os.path.abspath(path).startswith(str(REPO)) else path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=2000)
    parser.add_argument("--base-prompts", type=int, default=128, help="N0 of the marginal throughput")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--model", default=str(REPO / "models" / "tiny-teacher"))
    parser.add_argument("--config", default=str(REPO / "configs" / "tiny.yaml"))
    parser.add_argument("--dummy-weights", action="store_true", help="random weights from config.json (vLLM load_format=dummy)")
    parser.add_argument("--ignore-eos", action="store_true", help="fixed output lengths: always max_tokens")
    parser.add_argument("--max-tokens", type=int, help="output length (default: the config's)")
    parser.add_argument("--sides", default=",".join(SIDES[:3]), help="comma-separated subset of " + ",".join(SIDES))
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)  # one measurement, in a child process
    args = parser.parse_args()
    if args.side:
        tokens, seconds = {"bare": run_bare, "ours": run_ours, "ray_data_llm": run_ray_data_llm,
                           "ours_one_batch": run_ours_one_batch}[args.side](config(args))
        print(f"RESULT {tokens} {seconds}")
        return

    sides = tuple(side for side in SIDES if side in args.sides.split(","))
    if "ours" not in sides:
        raise SystemExit("--sides must include ours")
    if not 0 < args.base_prompts < args.prompts:
        raise SystemExit("--base-prompts must be between 0 and --prompts")
    passthrough = [*(["--dummy-weights"] if args.dummy_weights else []), *(["--ignore-eos"] if args.ignore_eos else []),
                   *(["--max-tokens", str(args.max_tokens)] if args.max_tokens else [])]
    header("Curation throughput", f"python bench/curation.py --prompts {args.prompts} --repeats {args.repeats} "
           f"--model {shown(args.model)} {' '.join(passthrough)}".strip())

    def measure(side: str, prompts: int) -> tuple[int, float]:
        cmd = [sys.executable, __file__, "--side", side, "--prompts", str(prompts), "--k", str(args.k),
               "--model", args.model, "--config", args.config, *passthrough]
        done = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, RAY_DATA_DISABLE_PROGRESS_BARS="1"))
        line = next((l for l in done.stdout.splitlines() if l.startswith("RESULT ")), None)
        if line is None:
            raise SystemExit(f"{side} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return int(line.split()[1]), float(line.split()[2])

    rates: dict[str, list[float]] = {side: [] for side in sides}
    for repeat in range(args.repeats):
        shift = repeat % len(sides)
        for side in sides[shift:] + sides[:shift]:  # rotate who goes first
            (tokens0, seconds0), (tokens, seconds) = measure(side, args.base_prompts), measure(side, args.prompts)
            rates[side].append((tokens - tokens0) / (seconds - seconds0))
            print(f"  repeat {repeat + 1} {side}: {args.base_prompts} prompts {seconds0:.0f} s, {args.prompts} prompts "
                  f"{seconds:.0f} s -> {rates[side][-1]:,.0f} tokens/s", flush=True)
    med = {side: statistics.median(v) for side, v in rates.items()}
    print(f"\n{args.prompts} prompts x K={args.k}, model {shown(args.model)}, marginal generated tokens/s incl. "
          f"scoring (median of {args.repeats}): " + ", ".join(f"{s} {v:,.0f}" for s, v in med.items()))
    result = {"median_tokens_per_s": med}
    if "bare" in med:
        result["ours_vs_bare"] = med["ours"] / med["bare"]
        print(f"- ours / bare vLLM loop: **{result['ours_vs_bare']:.2f}x** (goal >= 0.90x)")
    if "ray_data_llm" in med:
        result["ours_vs_ray_data_llm"] = med["ours"] / med["ray_data_llm"]
        print(f"- ours / ray.data.llm with K duplicated rows: **{result['ours_vs_ray_data_llm']:.2f}x** (goal >= 1.5x)")
    if "ours_one_batch" in med:
        result["ours_vs_one_batch"] = med["ours"] / med["ours_one_batch"]
        print(f"- ours / ours one batch at a time (concurrent_batches=1): **{result['ours_vs_one_batch']:.2f}x**")
    print("\n" + json.dumps(result))

if __name__ == "__main__":
    main()
