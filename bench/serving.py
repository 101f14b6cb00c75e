"""Serving benchmark (issue: Benchmarks, target 5).

1. `POST /evaluate` on N items vs the offline evaluator's work on the same items — the same
   engine and scoring, warm; the offline side in the evaluator's batch-size chunks (goal <= 1.2x); the end-to-end offline
   evaluator (Ray Data, engine start included) is shown for context.
2. Throughput and p50/p99 latency with 32 concurrent clients.

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default="models/tiny-student")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=256, help="requests in the concurrency run")
    parser.add_argument("--port", type=int, default=8011)
    args = parser.parse_args()
    header("Serving", f"python bench/serving.py --items {args.items}")

    from ray import serve

    from advdistill.cli import init_ray
    from advdistill.config import DatasetConfig, load_config
    from advdistill.data.synthetic import make_split
    from advdistill.evaluation.evaluator import eval_params, evaluate, score_predictions
    from advdistill.generation.engines import make_engine
    from advdistill.generation.rows import generate_rows
    from advdistill.serve.app import build_app

    cfg = load_config(REPO / "configs" / "tiny.yaml")
    records = make_split("test", args.items)
    items = [{"question": r["question"], "reference": r["reference"], "task": "synthetic"} for r in records]
    init_ray()
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
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        evaluate(cfg, str(REPO / args.model), DatasetConfig(name="synthetic", split="test", limit=args.items), out)
        end_to_end = time.perf_counter() - start
    print(f"- /evaluate on {args.items} items / offline evaluation of the same items (warm engine, same engine and scoring; "
          f"median of {args.repeats}): **{times['serve'] / times['offline']:.2f}x** (goal <= 1.2x)")
    print(f"  (the end-to-end offline evaluator, Ray Data with a fresh engine, took {end_to_end / times['serve']:.1f}x "
          f"the time of one warm /evaluate call)")

    def one(i: int) -> float:
        body = {"model": "m", "items": items[(2 * i) % len(items):][:2]}
        t0 = time.perf_counter()
        assert client.post(url, json=body).status_code == 200
        return time.perf_counter() - t0

    with ThreadPoolExecutor(args.clients) as pool:
        start = time.perf_counter()
        latencies = sorted(pool.map(one, range(args.requests)))
        wall = time.perf_counter() - start
    p50, p99 = latencies[len(latencies) // 2], latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    print(f"- {args.clients} concurrent clients, {args.requests} requests of 2 items: {args.requests / wall:.1f} requests/s, "
          f"p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms (p99/p50 {p99 / p50:.2f}x)")
    print("\n" + json.dumps({"serve_vs_offline": times["serve"] / times["offline"], "requests_per_s": args.requests / wall,
                             "p50_s": p50, "p99_s": p99, "median_latency": statistics.median(latencies)}))
    serve.shutdown()


if __name__ == "__main__":
    main()
