"""Serving benchmark (issue: Benchmarks, target 5).

1. `POST /evaluate` on N items vs the offline evaluator's work on the same items — the same
   engine and scoring, warm; the offline side in the evaluator's batch-size chunks (goal <= 1.2x); the end-to-end offline
   evaluator (Ray Data, engine start included) is shown for context.
2. Load: 32 and 128 concurrent clients, each request one of a mix — `/evaluate` (2 items),
   an evaluation job (`POST /evaluations` of 4 items, polled to the end; a 429 at the job cap is
   retried after its Retry-After, as a client should) and `/v1/chat/completions` (the OpenAI
   route) — with throughput, p50/p99 per kind and every error counted.

    python bench/serving.py [--items 200] [--model models/tiny-student]
"""

from __future__ import annotations

import argparse
import json
import statistics
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default="models/tiny-student")
    parser.add_argument("--load-clients", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--requests", type=int, default=256, help="requests in each load run")
    parser.add_argument("--port", type=int, default=8011)
    args = parser.parse_args()
    header("Serving", f"python bench/serving.py --items {args.items}")

    from ray import serve

    from advdistill.local_ray import init_ray
    from advdistill.config import DatasetConfig, load_config
    from advdistill.data.synthetic import make_split
    from advdistill.evaluation.evaluator import eval_params, evaluate, score_predictions
    from advdistill.generation.factory import make_engine
    from advdistill.generation.rows import generate_rows
    from advdistill.serve.app import build_app

    cfg = load_config(REPO / "configs" / "tiny.yaml")
    records = make_split("test", args.items)
    items = [{"question": r["question"], "reference": r["reference"], "task": "synthetic"} for r in records]
    init_ray()
    # The end-to-end offline evaluator first, while the cluster is free: beside the Serve app its
    # Ray Data actors would wait for CPUs the replicas hold.
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        evaluate(cfg, str(REPO / args.model), DatasetConfig(name="synthetic", split="test", limit=args.items), out)
        end_to_end = time.perf_counter() - start
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    serve.run(build_app({"config": str(REPO / "configs" / "tiny.yaml"), "checkpoint_root": str(REPO),
                         "models": [{"name": "m", "path": args.model}]}), name="bench", route_prefix="/")
    url = f"http://127.0.0.1:{args.port}/evaluate"
    client = httpx.Client(timeout=600)

    def served() -> None:
        assert client.post(url, json={"model": "m", "items": items}).status_code == 200

    import torch

    torch.set_num_threads(1)  # what the replica computes with: Ray gives its 1-CPU actor one thread
    engine = make_engine(str(REPO / args.model), cfg.eval.engine)
    size = cfg.eval.engine.batch_size

    def offline() -> None:
        for start in range(0, len(records), size):
            score_predictions(generate_rows(engine, records[start : start + size], eval_params(cfg), prompt=cfg.prompt,
                                            few_shot=0, seed=0))

    from common import interleaved

    times = interleaved({"serve": served, "offline": offline}, repeats=args.repeats)
    print(f"- /evaluate on {args.items} items / offline evaluation of the same items (warm engine, same engine and scoring; "
          f"median of {args.repeats}): **{times['serve'] / times['offline']:.2f}x** (goal <= 1.2x)")
    print(f"  (the end-to-end offline evaluator, Ray Data with a fresh engine, took {end_to_end / times['serve']:.1f}x "
          f"the time of one warm /evaluate call)")

    base = url.removesuffix("/evaluate")
    loads = {clients: load(client, base, items, clients, args.requests) for clients in args.load_clients}
    for clients, result in loads.items():
        print(f"- {clients} concurrent clients, {args.requests} requests (mix of /evaluate, jobs, /v1/chat/completions): "
              f"{result['requests_per_s']:.1f} requests/s, {result['errors']} errors, "
              f"{result['rejected_429']} job submissions answered 429 and retried")
        for kind, k in result["kinds"].items():
            print(f"  - {kind}: {k['n']} requests, p50 {k['p50_ms']:.0f} ms, p99 {k['p99_ms']:.0f} ms, "
                  f"errors {k['errors']}")
    print("\n" + json.dumps({"serve_vs_offline": times["serve"] / times["offline"], "load": loads}))
    serve.shutdown()


if __name__ == "__main__":
    main()
