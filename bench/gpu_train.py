"""One AdvDistill training step on a GPU, every way we can take it, against a TRL-like baseline
(issue 16 item 4). torch + transformers only: no Ray, no vLLM, no pydantic (the GPU image has
torch 2.11 and transformers 5.17 and nothing else); it imports only the pure-torch modules of the
package (`advdistill.loss`, `advdistill.train.group_batches`, `.attention`, `.model`).

The student: Qwen2.5-1.5B's published architecture (hidden 1,536, 28 layers, 12 query / 2 KV
heads, MLP 8,960, vocabulary 151,936, tied embeddings), random weights, bf16 parameters, AdamW.
The group: K = 8 responses of 512-2,048 tokens (seeded) after one 256-token prompt.

Configurations, each timed over the same group (median of --repeats steps after one warm-up,
forward + backward + AdamW step):
- layout: separate (K sequences `prompt + response_i`) or packed (the prompt once), with the packed
  attention backends dense (L x L mask), segments (per-segment SDPA) and flex (FlexAttention);
- log-probs: chunked (`advdistill.loss.token_logprobs`, never more than a chunk of vocabulary
  logits) or full (every position's logits at once, as transformers' LM head gives them);
- activation checkpointing off or on;
- and the baseline "trl-like": separate sequences, full-vocabulary logits of every position,
  plain token cross-entropy over all responses (what an SFT trainer does with K sequences), with
  activation checkpointing off and on (TRL's default); ratios are to the AC-off baseline, or to
  the AC-on one where AC-off ran out of memory.

Printed per configuration: response tokens/s (the trained tokens: the same for every
configuration), the ratio to the baseline's tokens/s (goal >= 1.5x at equal or lower peak memory),
model FLOPs utilisation and peak memory (`torch.cuda.max_memory_allocated`). The baselines run
first; every other row is printed, and `--json` rewritten, as soon as its configuration finishes,
and a configuration that fails in any way (out of memory, a FlexAttention compile error) is a row
saying so, not the end of the run (`bench/gpu_slot.sh` part 4 runs a subset under a time limit).

MFU = F / (step seconds x peak FLOP/s), with F the FLOPs the step needs at the least, i.e. those of
the packed computation, whatever the configuration did (so MFU is comparable across them, and
activation recomputation does not count):
    F = 6 N_layers T  +  6 V H R  +  12 n_layers H S
N_layers = the decoder layers' matrix parameters, T = prompt + all responses (tokens through the
body), V H = the output head, R = response tokens (positions scored), S = visible query-key pairs
(prompt causal, each response: the prompt and itself causally). Peak: bf16 dense tensor-core
FLOP/s of the GPU (H100 SXM and H200 989 TFLOP/s, H100 PCIe 756, A100 312; --peak-tflops
otherwise).

    python bench/gpu_train.py                  # on a GPU
    python bench/gpu_train.py --tiny           # CPU, reduced shape, seconds (the test suite runs it)
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import time
import traceback
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import Qwen2Config, Qwen2ForCausalLM

from common import header, write_json  # also puts the repository on sys.path

from advdistill.loss import IGNORE_INDEX, advdistill_loss
from advdistill.train.attention import flex_available, use_packed_attention
from advdistill.train.group_batches import group_batch, model_inputs, packed_group_batch
from advdistill.train.model import ResponseLogProbs, enable_activation_checkpointing

# Qwen2.5-1.5B's config.json (hub: Qwen/Qwen2.5-1.5B), and a reduced shape for CPU smoke runs.
QWEN25_15B = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                  num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, rope_theta=1000000.0,
                  rms_norm_eps=1e-6, tie_word_embeddings=True)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=512, max_position_embeddings=1024, tie_word_embeddings=True)
PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "GH200": 989.0, "A100": 312.0, "L40S": 362.0}
# train.loss's τ, λ, δ (SPEC §6), stated here because this script runs without the config stack;
# the step time does not depend on them.
LOSS = {"tau": 0.5, "lam": 0.5, "delta": 1e-5}


@dataclass(frozen=True)
class Setup:
    name: str
    layout: str  # separate | packed
    attention: str  # dense | segments | flex (packed only)
    logits: str  # chunked | full
    checkpointing: bool
    baseline: bool = False


def setups(device: torch.device) -> list[Setup]:
    # TRL's SFT trainer checkpoints activations by default; without it, full logits and 8 x 2k
    # tokens of activations may not fit, so both are run and the ratio is to AC-off where it fits.
    out = [Setup(f"trl-like baseline AC-{'on' if ac else 'off'}", "separate", "dense", "full", ac, baseline=True)
           for ac in (False, True)]
    layouts = [("separate", "dense"), ("packed", "dense"), ("packed", "segments"), ("packed", "flex")]
    for layout, attention in layouts:
        for logits in ("chunked", "full"):
            for checkpointing in (False, True):
                name = f"{layout if layout == 'separate' else 'packed-' + attention} {logits} AC-{'on' if checkpointing else 'off'}"
                out.append(Setup(name, layout, attention, logits, checkpointing))
    return out


def make_group(k: int, prompt: int, low: int, high: int, vocab: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = lambda n: torch.randint(3, vocab, (n,), generator=g).tolist()  # noqa: E731
    lengths = torch.randint(low, high + 1, (k,), generator=g).tolist()
    return {"prompt_ids": ids(prompt), "response_ids": [ids(n) for n in lengths],
            "advantages": torch.randn(k, generator=g).tolist(), "correct": [i % 2 == 0 for i in range(k)]}


def useful_flops(config: Qwen2Config, prompt: int, responses: list[int]) -> float:
    """F = 6 N_layers T + 6 V H R + 12 n_layers H S (module docstring)."""
    h, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    n_layers = layers * (2 * h * h + 2 * h * kv + 3 * h * inter)  # q, o; k, v; gate, up, down
    tokens, scored = prompt + sum(responses), sum(responses)
    pairs = prompt * (prompt + 1) / 2 + sum(r * prompt + r * (r + 1) / 2 for r in responses)
    return 6 * n_layers * tokens + 6 * config.vocab_size * h * scored + 12 * layers * h * pairs


def peak_flops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_TFLOPS.items():  # "H100 PCIe" before "H100"
        if key in name:
            return tflops * 1e12
    return None


def full_logit_logprobs(model: ResponseLogProbs, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Token log-probs through full-vocabulary logits of every scored position at once (fp32
    log-softmax, as transformers' loss upcasts)."""
    hidden, targets = model.response_hidden(**model_inputs(batch))
    logits = model.lm.lm_head(hidden).float()
    mask = targets != IGNORE_INDEX
    picked = logits.log_softmax(-1).gather(-1, targets.clamp_min(0)[..., None]).squeeze(-1)
    return picked * mask, mask


def trl_like_loss(lm: Qwen2ForCausalLM, batch: dict) -> torch.Tensor:
    """Separate sequences, every position's logits, mean token cross-entropy (fp32)."""
    logits = lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    return F.cross_entropy(logits[:, :-1].float().flatten(0, 1), batch["labels"][:, 1:].flatten(),
                           ignore_index=IGNORE_INDEX)


def step(setup: Setup, model: ResponseLogProbs, batch: dict, optimizer: torch.optim.Optimizer) -> None:
    if setup.baseline:
        loss = trl_like_loss(model.lm, batch)
    else:
        if setup.logits == "chunked":
            logprobs, mask = model(**model_inputs(batch))
        else:
            logprobs, mask = full_logit_logprobs(model, batch)
        loss = advdistill_loss(logprobs, mask, batch["advantages"], batch["correct"], **LOSS)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(setup: Setup, lm: Qwen2ForCausalLM, batches: dict, optimizer, device: torch.device, repeats: int,
            chunk_size: int) -> dict:
    if setup.attention == "flex" and device.type != "cuda":
        return {"skipped": "no FlexAttention backward on CPU (torch): GPU only"}
    if setup.attention == "flex" and not flex_available():
        return {"skipped": "this torch has no FlexAttention"}
    if setup.checkpointing:
        enable_activation_checkpointing(lm)
    else:
        lm.gradient_checkpointing_disable()
    model = ResponseLogProbs(lm, chunk_size=chunk_size, packed_attention=setup.attention).train()
    batch = batches[setup.layout]
    failure = None
    try:
        start = time.perf_counter()
        step(setup, model, batch, optimizer)  # warm-up (FlexAttention compiles here)
        sync(device)
        first = time.perf_counter() - start
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            step(setup, model, batch, optimizer)
            sync(device)
            times.append(time.perf_counter() - start)
    except torch.OutOfMemoryError:
        failure = {"skipped": "out of memory"}  # freed below, once the exception (and its frames) is gone
    except Exception as err:  # noqa: BLE001 - any failure is this configuration's row, not the run's end
        traceback.print_exc()
        failure = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"}
    if failure is not None:
        optimizer.zero_grad(set_to_none=True)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if "error" in failure:
            torch._dynamo.reset()  # a failed compile leaves no half-built state to the next configuration
        return failure
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {"seconds": statistics.median(times), "first_step_seconds": first, "peak_bytes": peak}


def table_row(name: str, r: dict, base: dict) -> str:
    """One configuration's row of the printed table (and of bench/gpu_slot.sh's gpu-slot.md)."""
    if "skipped" in r or "error" in r:
        why = f"skipped: {r['skipped']}" if "skipped" in r else f"failed: {r['error']}"
        return f"| {name} | — | — | — | — | {why.replace('|', '/')} |"
    mem = f"{r['peak_bytes'] / 2**30:.1f} GiB" if r["peak_bytes"] is not None else "n/a (CPU)"
    if r["peak_bytes"] is not None and base.get("peak_bytes"):
        mem += f" ({r['peak_bytes'] / base['peak_bytes']:.2f}x)"
    vs = f"{r['vs_baseline']:.2f}x" if r.get("vs_baseline") else "—"
    mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "n/a"
    return f"| {name} | {r['seconds']:.3f} | {r['tokens_per_s']:,.0f} | {vs} | {mfu} | {mem} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="reduced shape for CPU (hidden 64, 2 layers, 16-token "
                                                             "prompt, responses of 8-32 tokens)")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk-size", type=int, default=1024, help="train.loss.chunk_size")
    parser.add_argument("--peak-tflops", type=float, help="peak bf16 dense TFLOP/s of the device (for MFU)")
    parser.add_argument("--only", help="comma-separated substrings: run only configurations whose name has one")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpu-threads", type=int, default=1,
                        help="torch threads on CPU (1: the smoke run should not wait on a busy machine's cores)")
    parser.add_argument("--json", help="also write the results here, rewritten after every configuration")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(args.cpu_threads)
    shape, (prompt, low, high) = (TINY, (16, 8, 32)) if args.tiny else (QWEN25_15B, (256, 512, 2048))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # CPU: fp32, a smoke run
    header("One AdvDistill step on a GPU: layouts, log-probs, activation checkpointing vs a TRL-like baseline",
           "python bench/gpu_train.py" + (" --tiny" if args.tiny else ""))

    torch.manual_seed(args.seed)
    config = Qwen2Config(**shape)
    with torch.device(device):  # initialised where it runs: a 1.5B model's random init takes half a minute on CPU
        lm = Qwen2ForCausalLM(config).to(dtype)
    use_packed_attention(lm)  # one model for every configuration: SDPA for the dense/separate ones
    optimizer = torch.optim.AdamW(lm.parameters(), lr=1e-6, weight_decay=0.01)
    group = make_group(args.k, prompt, low, high, config.vocab_size, args.seed)
    to_device = lambda b: {k: v.to(device) for k, v in b.items()}  # noqa: E731
    batches = {"separate": to_device(group_batch(group, pad_id=0)), "packed": to_device(packed_group_batch(group, 0))}
    responses = [len(r) for r in group["response_ids"]]
    flops, peak = useful_flops(config, prompt, responses), peak_flops(device, args.peak_tflops)
    scored = sum(responses)
    params = sum(p.numel() for p in lm.parameters())
    print(f"Student: Qwen2 hidden {config.hidden_size} x {config.num_hidden_layers} layers, "
          f"{config.num_attention_heads}/{config.num_key_value_heads} heads, MLP {config.intermediate_size}, "
          f"vocab {config.vocab_size} ({params / 1e9:.3f} B parameters, {dtype}), device {device}")
    print(f"Group: K = {args.k}, prompt {prompt} tokens, responses {responses} ({scored} scored tokens); "
          f"F = {flops / 1e12:.2f} TFLOP per step; peak {'%.0f TFLOP/s' % (peak / 1e12) if peak else 'unknown (no MFU)'}")
    print(f"Median of {args.repeats} steps after one warm-up; ratio = tokens/s / the baseline's\n")

    selected = [s for s in setups(device) if not args.only or any(part in s.name for part in args.only.split(","))]
    results: dict[str, dict] = {}
    summary = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "flops_per_step": flops, "peak_flops": peak, "scored_tokens": scored, "results": results}
    for setup in [s for s in selected if s.baseline]:  # first: every other row's ratio needs them
        results[setup.name] = measure(setup, lm, batches, optimizer, device, args.repeats, args.chunk_size)
        if args.json:
            write_json(args.json, summary)
    base_name = next((n for n in ("trl-like baseline AC-off", "trl-like baseline AC-on")
                      if "seconds" in results.get(n, {})), None)
    base = results[base_name] if base_name else {}
    summary["baseline"] = base_name
    print(f"Baseline for the ratios: {base_name or 'none ran'}\n")
    print("| configuration | step s | response tokens/s | vs baseline | MFU | peak memory |")
    print("|---|---|---|---|---|---|")

    def finish(name: str) -> None:
        """Figures and table row of one finished configuration; the JSON so far rewritten."""
        r = results[name]
        if "seconds" in r:
            r["tokens_per_s"] = scored / r["seconds"]
            r["vs_baseline"] = base["seconds"] / r["seconds"] if "seconds" in base else None
            r["mfu"] = flops / r["seconds"] / peak if peak else None
        print(table_row(name, r, base), flush=True)
        if args.json:
            write_json(args.json, summary)

    for name in list(results):
        finish(name)
    for setup in [s for s in selected if not s.baseline]:
        results[setup.name] = measure(setup, lm, batches, optimizer, device, args.repeats, args.chunk_size)
        finish(setup.name)
    best = max((r for r in results.values() if r.get("vs_baseline") and not math.isnan(r["vs_baseline"])
                and (r["peak_bytes"] is None or not base.get("peak_bytes") or r["peak_bytes"] <= base["peak_bytes"])),
               key=lambda r: r["vs_baseline"], default=None)
    if best is not None:
        name = next(n for n, r in results.items() if r is best)
        summary["fastest_at_baseline_memory"] = name
        print(f"\n- fastest at equal or lower peak memory than the baseline: {name}, **{best['vs_baseline']:.2f}x** "
              "the baseline's tokens/s (goal >= 1.5x on a GPU)")
        if args.json:
            write_json(args.json, summary)
    print("\n" + json.dumps(summary))


if __name__ == "__main__":
    main()
