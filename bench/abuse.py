"""The evaluation API under abuse (issue: no poison pills, no 500s, no stalls), side by side.

    python bench/abuse.py [--seconds 60] [--clients 4] [--abusers 4]

Two phases of the same length against one real Serve app (the tiny student, a bearer token,
loopback): *quiet* — normal clients only — and *abuse* — the same clients while abusers send,
in a loop, what issue 15 found taking the service down or answering 500: references that make
sympy compute for minutes (`9^{9^{9}}`), a question longer than the model's context, NaN, lone
surrogates and NUL bytes, a 10,000-character dataset path, hidden and escaping paths, a 9 MB
body, a body without a token, malformed JSON, `few_shot` beyond the exemplars, a file that is
not a dataset, an unknown model. A prober reads `/healthz` every 0.2 s throughout.

Printed: requests sent and status counts (2xx / 4xx / 5xx / no answer) per phase, the normal
clients' p50/p99 latency in each phase and their ratio (abuse / quiet), and the worst `/healthz`
latency in each phase. Goals: no 5xx, no unanswered request, `/healthz` always within 1 s.
"""

from __future__ import annotations

import argparse
import json
import socket
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from common import REPO, header

TOKEN = "bench-abuse-token"
AUTH = {"Authorization": f"Bearer {TOKEN}", "content-type": "application/json"}
MODEL = "tiny-student"


def abusive_requests(good: dict) -> list[tuple[str, bytes, dict]]:
    """(name, raw body, headers) of each kind of abuse."""
    def body(**overrides) -> bytes:
        return json.dumps({"model": MODEL, "items": [dict(good, **overrides)], "sampling": {"max_tokens": 16}}).encode()

    return [
        ("power-tower reference", body(reference="9^{9^{9}}"), AUTH),
        ("question longer than the context", body(question="How many apples? " * 600), AUTH),
        ("NaN temperature", json.dumps({"model": MODEL, "items": [good]}).encode()[:-1] + b', "sampling": {"temperature": NaN}}',
         AUTH),
        ("lone surrogate", body(question="\udfff what?"), AUTH),  # json.dumps writes it as the escape \\udfff
        ("NUL byte", body(question="a\u0000b"), AUTH),
        ("10,000-character path", json.dumps({"model": MODEL, "dataset": {"name": "synthetic", "split": "test",
                                                                          "path": "x" * 10_000}}).encode(), AUTH),
        ("escaping path", json.dumps({"model": MODEL, "dataset": {"name": "synthetic", "split": "test",
                                                                  "path": "../../etc/passwd"}}).encode(), AUTH),
        ("9 MB body", body(question="q" * (9 * 2**20)), AUTH),
        ("no token", body(), {"content-type": "application/json"}),
        ("malformed JSON", b'{"model": "tiny-student", "items": [', AUTH),
        ("few_shot 16", json.dumps({"model": MODEL, "items": [good], "sampling": {"few_shot": 16}}).encode(), AUTH),
        ("not a dataset", json.dumps({"model": MODEL, "dataset": {"name": "synthetic", "split": "test",
                                                                  "path": "notes.txt"}}).encode(), AUTH),
        ("unknown model", json.dumps({"model": "x" * 150, "items": [good]}).encode(), AUTH),
    ]


class Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.statuses: Counter[str] = Counter()
        self.by_kind: dict[str, Counter[str]] = {}
        self.latencies: list[float] = []
        self.health: list[float] = []

    def status(self, kind: str, status: int | None) -> None:
        label = "no answer" if status is None else f"{status // 100}xx"
        with self.lock:
            self.statuses[label] += 1
            self.by_kind.setdefault(kind, Counter())[str(status)] += 1


def run_phase(url: str, seconds: float, clients: int, abusers: int, items: list[dict]) -> Recorder:
    rec, stop = Recorder(), threading.Event()
    abuse = abusive_requests(items[0])

    def client(i: int) -> None:
        with httpx.Client(timeout=120) as http:
            n = 0
            while not stop.is_set():
                batch = [items[(i * 7 + n + k) % len(items)] for k in range(4)]
                t0 = time.perf_counter()
                try:
                    status = http.post(url + "/evaluate", headers=AUTH,
                                       json={"model": MODEL, "items": batch, "sampling": {"max_tokens": 160}}).status_code
                except httpx.HTTPError:
                    status = None
                rec.status("normal", status)
                if status == 200:
                    with rec.lock:
                        rec.latencies.append(time.perf_counter() - t0)
                n += 1

    def abuser(i: int) -> None:
        with httpx.Client(timeout=120) as http:
            n = i
            while not stop.is_set():
                kind, raw, headers = abuse[n % len(abuse)]
                try:
                    status = http.post(url + "/evaluate", content=raw, headers=headers).status_code
                except httpx.HTTPError:
                    status = None
                rec.status(kind, status)
                n += abusers

    def prober() -> None:
        with httpx.Client(timeout=10) as http:
            while not stop.is_set():
                t0 = time.perf_counter()
                try:
                    ok = http.get(url + "/healthz").status_code == 200
                except httpx.HTTPError:
                    ok = False
                with rec.lock:
                    rec.health.append(time.perf_counter() - t0 if ok else float("inf"))
                time.sleep(0.2)

    threads = ([threading.Thread(target=client, args=(i,)) for i in range(clients)]
               + [threading.Thread(target=abuser, args=(i,)) for i in range(abusers)]
               + [threading.Thread(target=prober)])
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return rec


def quantile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--abusers", type=int, default=4)
    args = parser.parse_args()
    header("The evaluation API under abuse", f"python bench/abuse.py --seconds {args.seconds:g} --clients {args.clients} "
                                             f"--abusers {args.abusers}")
    import os

    import ray
    from ray import serve

    from advdistill.data.synthetic import make_split
    from advdistill.serve.app import build_app

    items = [{"question": r["question"], "reference": r["reference"], "task": "synthetic"} for r in make_split("test", 64)]
    data_root = Path(tempfile.mkdtemp(prefix="abuse-data-"))
    (data_root / "notes.txt").write_text("not a dataset\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # loopback only, like the test suite's cluster
    ray.init(num_cpus=max(os.cpu_count() or 1, 4), include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app({"config": str(REPO / "configs" / "tiny.yaml"), "checkpoint_root": str(REPO),
                             "data_root": str(data_root), "max_items": 8,
                             "api_ray_actor_options": {"runtime_env": {"env_vars": {"ADVDISTILL_API_TOKEN": TOKEN}}},
                             "models": [{"name": MODEL, "path": "models/tiny-student"}]}), name="abuse", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        httpx.post(url + "/evaluate", headers=AUTH, json={"model": MODEL, "items": items[:4]}, timeout=300)  # warm
        phases = {"quiet": run_phase(url, args.seconds, args.clients, 0, items),
                  "abuse": run_phase(url, args.seconds, args.clients, args.abusers, items)}
    finally:
        serve.shutdown()
        ray.shutdown()
    print("| phase | requests | 2xx | 4xx | 5xx | no answer | normal p50 s | normal p99 s | /healthz worst s |")
    print("|---|---|---|---|---|---|---|---|---|")
    summary = {}
    for name, rec in phases.items():
        s = rec.statuses
        summary[name] = {"requests": sum(s.values()), **dict(s), "p50_s": quantile(rec.latencies, 0.5),
                         "p99_s": quantile(rec.latencies, 0.99), "healthz_worst_s": max(rec.health, default=float("nan")),
                         "by_kind": {k: dict(v) for k, v in rec.by_kind.items()}}
        r = summary[name]
        print(f"| {name} | {r['requests']} | {s['2xx']} | {s['4xx']} | {s['5xx']} | {s['no answer']} | "
              f"{r['p50_s']:.2f} | {r['p99_s']:.2f} | {r['healthz_worst_s']:.3f} |")
    quiet, abuse = summary["quiet"], summary["abuse"]
    print(f"\n- normal clients' p50 under abuse / quiet: **{abuse['p50_s'] / quiet['p50_s']:.2f}x**, "
          f"p99 {abuse['p99_s'] / quiet['p99_s']:.2f}x")
    print(f"- 5xx: {quiet.get('5xx', 0) + abuse.get('5xx', 0)}, no answer: "
          f"{quiet.get('no answer', 0) + abuse.get('no answer', 0)} (goal 0); /healthz worst: "
          f"{max(quiet['healthz_worst_s'], abuse['healthz_worst_s']):.3f} s (goal <= 1 s)")
    print("- status per kind of abuse: " + "; ".join(
        f"{kind} {dict(counts)}" for kind, counts in sorted(abuse["by_kind"].items()) if kind != "normal"))
    print("\n" + json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "by_kind"} for k, v in summary.items()}))


if __name__ == "__main__":
    main()
