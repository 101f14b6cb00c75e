"""Part 2 of bench/gpu_slot.sh: the chunked log-prob head on a GPU (at most 30 s).

A. The backward's gradient of the output head, `grad_weight += grad_logitsᵀ · hidden`, one
   (V × c) · (c × H) product per chunk of c tokens, summed in fp32 over a group's chunks:
   - fp32: plain fp32 (TF32 off), what the backward did before issue 26;
   - tf32: the same product with TF32 tensor cores allowed;
   - bf16: the product in bf16, added into the fp32 sum (`advdistill.loss._add_chunk_grad_weight`,
     what the backward does now under bf16 mixed precision);
   - bf16 → fp32 out: one bf16 product written straight in fp32 (`torch.mm(..., out_dtype=)`),
     where this torch has it: the alternative without a bf16 temporary.
   Median time over the group's chunks, peak memory above the inputs, and each result's largest
   error relative to the plain-fp32 sum's largest entry.
B. A group's log-probs, forward and backward: chunked (`token_logprobs`, bf16 inputs) against
   full logits (every position's bf16 logits, fp32 log-softmax, as transformers' LM head and loss
   do): time and peak memory.

Qwen2.5-1.5B's head (H 1,536, V 151,936), c = 1,024 (`train.loss.chunk_size`), 8,192 tokens. On
CPU (`--tiny`, the dry run) a toy head; TF32 and out_dtype are CUDA-only and reported as skipped.

    python bench/slot_logprobs.py --json OUT/part2-logprobs.json [--tiny]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Callable

from common import write_json  # also puts the repository on sys.path

import torch  # noqa: E402

from advdistill.loss import _add_chunk_grad_weight, token_logprobs  # noqa: E402


def measure(fn: Callable[[], Any], device: torch.device, repeats: int) -> dict[str, Any]:
    """Median seconds of `fn` after one warm-up; on CUDA the peak bytes it allocated above what
    was allocated before it."""
    fn()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() - before if cuda else None
    return {"seconds": statistics.median(times), "peak_bytes_above_inputs": peak}


def grad_matmul(device: torch.device, hidden: int, vocab: int, chunk: int, chunks: int, repeats: int) -> dict:
    g = torch.Generator(device=device).manual_seed(0)
    h = torch.randn(chunks, chunk, hidden, device=device, generator=g).bfloat16()  # the chunks' hidden states
    grad_logits = (torch.randn(chunk, vocab, device=device, generator=g) * 1e-3)  # one chunk's, reused
    grad_logits_bf16 = grad_logits.bfloat16()
    sums = {name: torch.zeros(vocab, hidden, device=device) for name in ("fp32", "tf32", "bf16", "bf16_out_fp32")}

    def plain(name: str) -> Callable[[], None]:
        def run() -> None:
            sums[name].zero_()
            for i in range(chunks):
                sums[name].addmm_(grad_logits.t(), h[i].float())
        return run

    def bf16() -> None:
        sums["bf16"].zero_()
        for i in range(chunks):
            _add_chunk_grad_weight(sums["bf16"], grad_logits_bf16, h[i])

    def bf16_out_fp32() -> None:
        sums["bf16_out_fp32"].zero_()
        for i in range(chunks):
            sums["bf16_out_fp32"].add_(torch.mm(grad_logits_bf16.t(), h[i], out_dtype=torch.float32))

    out: dict[str, Any] = {}
    cuda = device.type == "cuda"
    tf32 = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        out["fp32"] = measure(plain("fp32"), device, repeats)
        if cuda:
            torch.backends.cuda.matmul.allow_tf32 = True
            out["tf32"] = measure(plain("tf32"), device, repeats)
            torch.backends.cuda.matmul.allow_tf32 = False
        else:
            out["tf32"] = {"skipped": "no CUDA"}
        out["bf16"] = measure(bf16, device, repeats)
        try:
            out["bf16_out_fp32"] = measure(bf16_out_fp32, device, repeats) if cuda else {"skipped": "no CUDA"}
        except (RuntimeError, TypeError) as err:  # a torch without mm(out_dtype=) for this device
            out["bf16_out_fp32"] = {"skipped": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"}
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    scale = sums["fp32"].abs().max().item()
    for name, r in out.items():
        if "seconds" in r:
            r["max_error_over_max_entry"] = (sums[name] - sums["fp32"]).abs().max().item() / scale
            r["vs_fp32"] = out["fp32"]["seconds"] / r["seconds"]
    return out


def head_forward_backward(device: torch.device, hidden: int, vocab: int, chunk: int, tokens: int, repeats: int) -> dict:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    g = torch.Generator(device=device).manual_seed(1)
    h = torch.randn(tokens, hidden, device=device, generator=g).to(dtype).requires_grad_()
    w = (torch.randn(vocab, hidden, device=device, generator=g) * 0.02).to(dtype).requires_grad_()
    labels = torch.randint(0, vocab, (tokens,), device=device, generator=g)

    def chunked() -> None:
        h.grad = w.grad = None
        token_logprobs(h, w, labels, chunk).sum().backward()

    def full() -> None:
        h.grad = w.grad = None
        logits = (h @ w.t()).float()
        logits.log_softmax(-1).gather(-1, labels[:, None]).sum().backward()

    out = {"dtype": str(dtype).removeprefix("torch."), "chunked": measure(chunked, device, repeats)}
    try:
        out["full_logits"] = measure(full, device, repeats)
    except torch.OutOfMemoryError:
        out["full_logits"] = {"skipped": "out of memory"}
    if "seconds" in out["full_logits"]:
        out["chunked"]["vs_full_logits"] = out["full_logits"]["seconds"] / out["chunked"]["seconds"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", required=True)
    parser.add_argument("--tiny", action="store_true", help="toy head on CPU (the dry run)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    on_gpu = torch.cuda.is_available() and not args.tiny
    device = torch.device("cuda" if on_gpu else "cpu")
    if not on_gpu:
        torch.set_num_threads(1)
    hidden, vocab, chunk, tokens = (64, 512, 64, 512) if args.tiny else (1536, 151936, 1024, 8192)
    result: dict[str, Any] = {"device": torch.cuda.get_device_name(device) if on_gpu else "cpu",
                              "hidden": hidden, "vocab": vocab, "chunk_size": chunk, "tokens": tokens}
    result["grad_weight_matmul"] = grad_matmul(device, hidden, vocab, chunk, tokens // chunk, args.repeats)
    write_json(args.json, result)
    result["head_forward_backward"] = head_forward_backward(device, hidden, vocab, chunk, tokens, args.repeats)
    write_json(args.json, result)
    for key in ("grad_weight_matmul", "head_forward_backward"):
        print(f"{key}: {result[key]}", flush=True)


if __name__ == "__main__":
    main()
