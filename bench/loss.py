"""Loss benchmark (issue: Benchmarks, target 2).

1. Time: AdvDistill loss forward+backward vs plain mean cross-entropy over the same tokens, both
   on the chunked log-prob path from the final hidden states through the output head (goal
   <= 1.05x), and for reference the usual full-logits `F.cross_entropy`.
2. Peak memory of the chunked log-prob path vs full-vocabulary logits at vocab 151,936, hidden
   1,536 and 8 x 512 response tokens (Qwen2.5-1.5B's head; goal <= 0.25x). Each side runs in a
   fresh process and reports its peak resident memory above what the inputs already hold.

    python bench/loss.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch
import torch.nn.functional as F

from common import REPO, header, interleaved

from advdistill.config import LossConfig
from advdistill.loss import advdistill_loss, sft_loss, token_logprobs

SPEC = LossConfig()


def make_inputs(n: int, t: int, hidden: int, vocab: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    h = (torch.randn(n, t, hidden, generator=g) * 0.5).requires_grad_()
    w = (torch.randn(vocab, hidden, generator=g) * 0.02).requires_grad_()
    labels = torch.randint(0, vocab, (n, t), generator=g)
    advantages = torch.randn(n, generator=g)
    correct = torch.arange(n) % 2 == 0
    return h, w, labels, advantages, correct


def step(kind: str, h, w, labels, advantages, correct, chunk: int) -> None:
    h.grad = w.grad = None
    if kind == "full_ce":
        loss = F.cross_entropy((h @ w.t()).float().view(-1, w.shape[0]), labels.view(-1))
    else:
        lp = token_logprobs(h, w, labels, chunk_size=chunk)
        mask = torch.ones_like(labels, dtype=torch.bool)
        loss = sft_loss(lp, mask) if kind == "chunked_ce" else advdistill_loss(
            lp, mask, advantages, correct, tau=SPEC.tau, lam=SPEC.lam, delta=SPEC.delta)
    loss.backward()


def peak_memory(kind: str, n: int, t: int, hidden: int, vocab: int, chunk: int) -> float:
    """Run in a child process: peak RSS (MiB) above the inputs, for one forward+backward."""
    code = (f"import sys; sys.path.insert(0, {str(REPO / 'bench')!r}); import resource, torch; torch.set_num_threads(2);"
            f"from loss import make_inputs, step; x = make_inputs({n}, {t}, {hidden}, {vocab});"
            "import gc; gc.collect(); base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss;"
            f"step({kind!r}, *x, chunk={chunk}); peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss;"
            "print((peak - base) / 1024)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--chunk", type=int, default=512, help="tokens per chunk (train.loss.chunk_size)")
    parser.add_argument("--time-shape", default="8,128,1024,32000", help="N,T,hidden,vocab of the timing runs")
    args = parser.parse_args()
    torch.set_num_threads(2)
    header("Loss: AdvDistill vs cross-entropy, chunked vs full logits", "python bench/loss.py")

    n, t, hidden, vocab = map(int, args.time_shape.split(","))
    inputs = make_inputs(n, t, hidden, vocab)
    times = interleaved({kind: (lambda kind=kind: step(kind, *inputs, chunk=args.chunk))
                         for kind in ("chunked_ce", "chunked_advdistill", "full_ce")}, repeats=args.repeats)
    print(f"Time, forward+backward from hidden states ({n}x{t} tokens, hidden {hidden}, vocab {vocab}; "
          f"median of {args.repeats}):")
    print(f"- AdvDistill / mean CE on the chunked path: **{times['chunked_advdistill'] / times['chunked_ce']:.3f}x** (goal <= 1.05x)")
    print(f"- chunked AdvDistill / full-logits F.cross_entropy: {times['chunked_advdistill'] / times['full_ce']:.3f}x "
          "(the price of recomputing each chunk's logits in backward)")

    shape = (8, 512, 1536, 151936)
    peaks = {kind: peak_memory(kind, *shape, chunk=args.chunk) for kind in ("chunked_advdistill", "full_ce")}
    print(f"\nPeak memory above the inputs, one forward+backward at 8x512 tokens, hidden 1536, vocab 151936 "
          f"(chunk {args.chunk}): chunked {peaks['chunked_advdistill']:,.0f} MiB, full logits {peaks['full_ce']:,.0f} MiB")
    print(f"- chunked / full: **{peaks['chunked_advdistill'] / peaks['full_ce']:.3f}x** (goal <= 0.25x)")
    print("\n" + json.dumps({"time_ratio_advdistill_vs_ce": times["chunked_advdistill"] / times["chunked_ce"],
                             "time_ratio_chunked_vs_full": times["chunked_advdistill"] / times["full_ce"],
                             "memory_ratio": peaks["chunked_advdistill"] / peaks["full_ce"], "peaks_mib": peaks}))


if __name__ == "__main__":
    main()
