"""Peak GPU memory per training worker: the ESTIMATE behind docs/memory.md, and a check of its
activation term against a measured CPU forward at a reduced shape (issue 14 item 6).

    python bench/memory.py            # the table of docs/memory.md (estimates) + the CPU check
    python bench/memory.py --no-check # the table only

Everything here is arithmetic on the published architectures (config.json of Qwen/Qwen2.5-1.5B and
Qwen/Qwen2.5-3B) and on what the training code keeps; nothing ran on a GPU. The formula, in bytes
per worker (W workers under FSDP2, bf16 compute, fp32 master weights and gradients, AdamW):

    states       = 16 N / W                        fp32 weights 4 + fp32 gradients 4 + AdamW moments 8
    root         = 2 V H + 4 V H + 2 V H           the gathered bf16 embedding (tied head) and, in
                                                   backward, its fp32 gradient and bf16 cast
    layers       = 2 (2 P_l) + 6 P_l               two gathered bf16 layers (current + prefetched)
                                                   and one layer's unsharded gradient (bf16 + fp32)
    activations  = T n_l a   + T 12 H              held from forward to backward, without
                                                   activation checkpointing
                 = T n_l 2H  + T 12 H              with it: only each layer's bf16 input
    recompute    = T a                             with it: one layer's activations, rebuilt in
                                                   backward (none without it)
    head chunk   = 12 c V                          one chunk of c tokens' logits (bf16 product, fp32
                                                   copy, exp and gradient), `train.loss.chunk_size`
    accumulation = 4 N   if M > 1, else 0          FSDP2's unsharded fp32 gradients of every
                                                   parameter, kept from one micro-batch to the next
    peak         = states + root + layers + activations + recompute + head chunk + accumulation
                   (+ overhead)

M = groups_per_step / W micro-batches per worker and step (paper: 16 / 8 = 2). With gradient sync
off (every micro-batch but a step's last), FSDP2 does not reduce-scatter: after each layer's
backward it casts the layer's unsharded bf16 gradient to the reduce dtype (fp32) and keeps it
(`FSDPParam.to_accumulated_grad_if_needed`), so from the end of the first micro-batch's backward
to the last one's reduce-scatter each worker holds the whole model's gradients in fp32, 4 N bytes,
not 4 N / W (on CPU, fp32 throughout, the same 4 N stay on the unsharded parameters). The peak
(the end of the last micro-batch's forward) sees all of them. `states` still counts the sharded
fp32 gradients, which do not exist then: conservative by 4 N / W.

with N parameters, V vocabulary, H hidden, P_l parameters of one decoder layer, n_l layers, T
tokens of one micro-batch (one group: K sequences `prompt + response` separately, or prompt +
K responses packed), and a the bytes one token leaves per layer for backward (bf16 activations):

    a = 22 H + 4 H_kv + 8 I + 4 heads
        RMSNorm x2: fp32 input 4H + normalised 2H + output 2H          = 16 H
        attention: q 2H, k and v 2 H_kv each, output 2H, its transposed
                   copy for o_proj 2H, log-sum-exp 4 per head           =  6 H + 4 H_kv + 4 heads
        MLP: gate 2I, up 2I, SiLU(gate) 2I, product 2I                  =  8 I
    On a GPU, transformers repeats the KV heads to all H heads before SDPA whenever there is a
    mask (CUDA's kernels take grouped heads only without one) and before FlexAttention when the
    head count is not a power of two (Qwen2.5-1.5B's 12): the table then counts 4H for k and v
    instead of 4 H_kv (conservative for the 3B's 16 heads under FlexAttention).

(SDPA's flash/memory-efficient kernels and FlexAttention keep no L x L scores; a dense packed mask
adds L² bytes of booleans; 12 H per token covers the embedding output, the final norm and the
gathered final states.) Not in the estimate: the CUDA context, NCCL buffers and allocator
fragmentation, typically 1-3 GB and ~10% more: the table adds 2 GB + 10% as "with overhead".
"""

from __future__ import annotations

import argparse
import ctypes
import json
import resource
import subprocess
import sys
from dataclasses import dataclass

GIB = 2**30
# What the framework can allocate on a "40 GB" (A100 40GB: 40 GiB of HBM) and an "80 GB" GPU
# (A100/H100 80GB: about 79 GiB reported by the driver).
USABLE_GIB = {40: 39.5, 80: 79.0}


@dataclass(frozen=True)
class Arch:
    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int = 151936

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * (self.hidden // self.heads)

    @property
    def layer_params(self) -> int:  # q, o (with q/k/v biases), k, v, gate/up/down, two norms
        h, kv = self.hidden, self.kv_dim
        return 2 * h * h + 2 * h * kv + (h + 2 * kv) + 3 * h * self.intermediate + 2 * h

    @property
    def params(self) -> int:  # tied embeddings: the head is the embedding
        return self.layers * self.layer_params + self.vocab * self.hidden + self.hidden

    def activation_bytes_per_token_layer(self, kv_repeated: bool = False) -> int:
        kv = self.hidden if kv_repeated else self.kv_dim
        return 22 * self.hidden + 4 * kv + 8 * self.intermediate + 4 * self.heads


# config.json of the hub models (hidden_size, num_hidden_layers, num_attention_heads,
# num_key_value_heads, intermediate_size, vocab_size).
QWEN25_15B = Arch("Qwen2.5-1.5B", hidden=1536, layers=28, heads=12, kv_heads=2, intermediate=8960)
QWEN25_3B = Arch("Qwen2.5-3B", hidden=2048, layers=36, heads=16, kv_heads=2, intermediate=11008)


def group_tokens(k: int, seq_len: int, prompt: int, packed: bool) -> int:
    """Tokens of one group whose K sequences are `seq_len` long (prompt + response)."""
    return prompt + k * (seq_len - prompt) if packed else k * seq_len


def estimate(arch: Arch, tokens: int, checkpointing: bool, workers: int = 8, chunk: int = 1024,
             kv_repeated: bool = True, micro_batches: int = 2) -> dict[str, float]:
    """Bytes per worker, term by term (module docstring); `micro_batches` = M, the passes each
    worker runs per optimizer step (groups_per_step / workers)."""
    h, v = arch.hidden, arch.vocab
    a = arch.activation_bytes_per_token_layer(kv_repeated)
    held_per_layer = 2 * h if checkpointing else a
    terms = {
        "states": 16 * arch.params / workers,
        "root": 8 * v * h,
        "layers": 10 * arch.layer_params,
        "activations": tokens * (arch.layers * held_per_layer + 12 * h),
        "recompute": tokens * a if checkpointing else 0,
        "head_chunk": 12 * chunk * v,
        "accumulation": 4 * arch.params if micro_batches > 1 else 0,
    }
    terms["peak"] = sum(terms.values())
    terms["with_overhead"] = terms["peak"] * 1.1 + 2 * GIB
    return terms


def table(k: int = 8, seq_len: int = 2048, prompt: int = 256, workers: int = 8, groups_per_step: int = 16) -> list[dict]:
    rows = []
    for arch in (QWEN25_15B, QWEN25_3B):
        for packed in (False, True):
            for checkpointing in (False, True):
                tokens = group_tokens(k, seq_len, prompt, packed)
                e = estimate(arch, tokens, checkpointing, workers, micro_batches=groups_per_step // workers)
                rows.append({"model": arch.name, "params": arch.params, "packed": packed, "checkpointing": checkpointing,
                             "tokens": tokens, **e})
    return rows


def print_table(rows: list[dict]) -> None:
    print("| student | layout (tokens per group) | activation checkpointing | states | accumulated gradients "
          "| activations | peak (estimate) | with overhead | fits 40 GB | fits 80 GB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        layout = f"{'packed' if r['packed'] else 'separate'} ({r['tokens']:,})"
        fits = lambda usable: "yes" if r["with_overhead"] <= usable * GIB else "no"  # noqa: E731
        print(f"| {r['model']} | {layout} | {'on' if r['checkpointing'] else 'off'} | {r['states'] / GIB:.1f} GiB | "
              f"{r['accumulation'] / GIB:.1f} GiB | {r['activations'] / GIB:.1f} GiB | **{r['peak'] / GIB:.1f} GiB** | {r['with_overhead'] / GIB:.1f} GiB | "
              f"{fits(USABLE_GIB[40])} | {fits(USABLE_GIB[80])} |")


# ------------------------------------------------------------------ the check on CPU

CHECK_ARCH = Arch("Qwen2.5-1.5B layer shape, 2 layers, vocab 4096", hidden=1536, layers=2, heads=12, kv_heads=2,
                  intermediate=8960, vocab=4096)


def _rss() -> int:
    """Resident bytes now, after handing freed heap memory back to the OS."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def measure_activations(packed: bool, checkpointing: bool, k: int, seq_len: int, prompt: int) -> dict[str, int]:
    """Run in a fresh process: bytes held after one bf16 forward (the graph alive, i.e. what
    backward will need) and the forward's peak, above the model and inputs."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    from advdistill.config import LossConfig
    from advdistill.loss import advdistill_loss
    from advdistill.train.group_batches import group_batch, model_inputs, packed_group_batch
    from advdistill.train.model import ResponseLogProbs, enable_activation_checkpointing

    torch.set_num_threads(1)
    torch.set_default_dtype(torch.bfloat16)  # built in bf16: no fp32 copy inflates the baseline
    a = CHECK_ARCH
    config = Qwen2Config(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.intermediate,
                         num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.kv_heads,
                         tie_word_embeddings=True)
    lm = Qwen2ForCausalLM(config)
    if checkpointing:
        enable_activation_checkpointing(lm)
    model = ResponseLogProbs(lm, chunk_size=256, packed_attention="segments" if packed else "dense").train()
    g = torch.Generator().manual_seed(0)
    group = {"prompt_ids": torch.randint(3, a.vocab, (prompt,), generator=g).tolist(),
             "response_ids": [torch.randint(3, a.vocab, (seq_len - prompt,), generator=g).tolist() for _ in range(k)],
             "advantages": torch.randn(k, generator=g).tolist(), "correct": [i % 2 == 0 for i in range(k)]}
    batch = (packed_group_batch if packed else group_batch)(group, 0)
    inputs = model_inputs(batch)
    before = _rss()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    logprobs, mask = model(**inputs)
    spec = LossConfig()
    loss = advdistill_loss(logprobs, mask, batch["advantages"], batch["correct"], tau=spec.tau, lam=spec.lam,
                           delta=spec.delta)
    held = _rss() - before
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - max(before, peak_before)
    del loss, logprobs, mask
    return {"held": held, "peak": peak}


def check(k: int = 8, seq_len: int = 256, prompt: int = 32) -> list[dict]:
    rows = []
    for packed in (False, True):
        for checkpointing in (False, True):
            code = (f"import sys; sys.path.insert(0, {str(__import__('pathlib').Path(__file__).parent)!r}); "
                    f"import json, memory; print(json.dumps(memory.measure_activations({packed}, {checkpointing}, "
                    f"{k}, {seq_len}, {prompt})))")
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            measured = json.loads(out.stdout.strip().splitlines()[-1])
            tokens = group_tokens(k, seq_len, prompt, packed)
            # The held activation term: on CPU the KV heads stay grouped (no repeat; SDPA's CPU
            # kernels take them with or without a mask).
            formula = estimate(CHECK_ARCH, tokens, checkpointing, kv_repeated=False)["activations"]
            rows.append({"packed": packed, "checkpointing": checkpointing, "tokens": tokens, "formula": formula,
                         **measured})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-check", action="store_true", help="skip the CPU measurement of the activation term")
    args = parser.parse_args()
    print("ESTIMATES (not measured on a GPU): peak memory per worker, FSDP2 over 8 workers, bf16 compute, fp32 "
          "master weights, AdamW; one group of K = 8 sequences of 2,048 tokens (a 256-token prompt + a 1,792-token "
          "response each; packed: the prompt once); train.loss.chunk_size 1024; 16 groups per step, i.e. 2 "
          "micro-batches per worker (gradients accumulated unsharded in fp32).\n")
    rows = table()
    print_table(rows)
    result = {"table": rows}
    if not args.no_check:
        print(f"\nCheck of the activation term on CPU ({CHECK_ARCH.name}; bf16; K = 8 x 256 tokens, prompt 32; "
              "bytes held after one forward, above the model and inputs):\n")
        print("| layout | activation checkpointing | tokens | formula | measured held | ratio | measured forward peak |")
        print("|---|---|---|---|---|---|---|")
        checks = check()
        for c in checks:
            print(f"| {'packed' if c['packed'] else 'separate'} | {'on' if c['checkpointing'] else 'off'} | {c['tokens']:,} | "
                  f"{c['formula'] / 2**20:,.0f} MiB | {c['held'] / 2**20:,.0f} MiB | {c['held'] / c['formula']:.2f} | "
                  f"{c['peak'] / 2**20:,.0f} MiB |")
        result["check"] = checks
    print("\n" + json.dumps(result))


if __name__ == "__main__":
    main()
