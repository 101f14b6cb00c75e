"""The evaluation API under abuse (issues 15 and 30: no poison pills, no 500s, no stalls, no client
breaking another), phase by phase.

    python bench/abuse.py [--seconds 60] [--clients 4] [--abusers 4] [--phases quiet,abuse,...]

Phases of the same length against one real Serve app (the tiny student, a bearer token, loopback,
on-demand checkpoints): *quiet* — normal clients only — then the same clients (the neighbours)
beside one kind of abuse each:
- *abuse* — issue 15's mix, in a loop: references that make sympy compute for minutes, a question
  longer than the context, NaN, lone surrogates, NUL bytes, a 10,000-character path, escaping
  paths, a 9 MB body, no token, malformed JSON, few_shot beyond the exemplars, a file that is not
  a dataset, an unknown model;
- *eviction* — the neighbours generate on an on-demand checkpoint (c1) while an abuser loads c2,
  c3, c4 in turn, each evicting the one before;
- *failing loads* — five folders that cannot load, on every route;
- *job race* — bursts of 32 concurrent POST /evaluations, every accepted job polled to its end;
- *corrupt jobs* — unreadable rows in the job database, read again and again beside new jobs;
- *huge prompts* — 6.4 MB of /v1/completions prompts;
- *slow clients* — 200 connections with unfinished headers, and bodies trickled a byte a second.
A prober reads `/healthz` every 0.2 s throughout.

Printed per phase: requests, status counts (2xx / 4xx / 5xx / no answer), the neighbours' p50/p99
latency, the worst `/healthz`; then how every job ended and the status per kind of abuse. Goals:
no 5xx, no unanswered request, `/healthz` within 1 s, every job done/failed/interrupted with its
result intact.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Callable

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


def mixed_abuse(good: dict) -> Callable:
    """Issue 15's abusive requests to /evaluate, in turn."""
    abuse = abusive_requests(good)

    def abuser(url: str, stop: threading.Event, record: Callable, first: int = 0) -> None:
        with httpx.Client(timeout=120) as http:
            n = first
            while not stop.is_set():
                kind, raw, headers = abuse[n % len(abuse)]
                try:
                    status = http.post(url + "/evaluate", content=raw, headers=headers).status_code
                except httpx.HTTPError:
                    status = None
                record(kind, status)
                n += 1
    return abuser


def run_phase(url: str, seconds: float, clients: int, abusers: list[Callable], items: list[dict],
              model: str = MODEL) -> Recorder:
    """`clients` neighbours on `model` and each of `abusers` in its own thread, for `seconds`."""
    rec, stop = Recorder(), threading.Event()

    def client(i: int) -> None:
        with httpx.Client(timeout=300) as http:
            n = 0
            while not stop.is_set():
                batch = [items[(i * 7 + n + k) % len(items)] for k in range(4)]
                t0 = time.perf_counter()
                try:
                    status = http.post(url + "/evaluate", headers=AUTH,
                                       json={"model": model, "items": batch, "sampling": {"max_tokens": 160}}).status_code
                except httpx.HTTPError:
                    status = None
                rec.status("normal", status)
                if status == 200:
                    with rec.lock:
                        rec.latencies.append(time.perf_counter() - t0)
                n += 1

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
               + [threading.Thread(target=a, args=(url, stop, rec.status)) for a in abusers]
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


PHASES = ["quiet", "abuse", "eviction", "failing loads", "job race", "corrupt jobs", "huge prompts", "slow clients"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--abusers", type=int, default=4, help="threads of the `abuse` phase's mix")
    parser.add_argument("--phases", default=",".join(PHASES))
    args = parser.parse_args()
    chosen = [p for p in args.phases.split(",") if p]
    header("The evaluation API under abuse", f"python bench/abuse.py --seconds {args.seconds:g} --clients {args.clients} "
                                             f"--abusers {args.abusers}")
    import os

    import ray
    from ray import serve

    import abuse_cases
    from advdistill.data.synthetic import make_split
    from advdistill.serve.app import build_app

    items = [{"question": r["question"], "reference": r["reference"], "task": "synthetic"} for r in make_split("test", 64)]
    work = Path(tempfile.mkdtemp(prefix="abuse-"))
    data_root, jobs = work / "data", work / "jobs"
    data_root.mkdir()
    (data_root / "notes.txt").write_text("not a dataset\n")
    root = abuse_cases.checkpoint_root(REPO, work / "checkpoints")
    shutil.copytree(REPO / "models" / "tiny-student", root / "models" / "tiny-student")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # loopback only, like the test suite's cluster
    ray.init(num_cpus=max(os.cpu_count() or 1, 6), include_dashboard=False, log_to_driver=False)
    jobs_finished: dict[str, int] = {}
    held: dict[str, int] = {}
    abusers = {
        "quiet": [],
        "abuse": [lambda u, st, r, i=i: mixed_abuse(items[0])(u, st, r, i) for i in range(args.abusers)],
        "eviction": [abuse_cases.eviction(items[0])],
        "failing loads": [abuse_cases.failing_loads(items[0])],
        "job race": [abuse_cases.job_race(items, jobs_finished)],
        "corrupt jobs": None,  # made once the job database exists
        "huge prompts": [abuse_cases.huge_prompts()],
        "slow clients": [abuse_cases.slow_clients(port, held)],
    }
    phases = {}
    try:
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app({"config": str(REPO / "configs" / "tiny.yaml"), "checkpoint_root": str(root),
                             "data_root": str(data_root), "max_items": 8, "jobs_folder": str(jobs),
                             "on_demand": True, "max_models_per_replica": 2, "body_timeout_s": 5,
                             "checkpoints_ray_actor_options": {"num_cpus": 0.5},
                             "api_ray_actor_options": {"runtime_env": {"env_vars": {"ADVDISTILL_API_TOKEN": TOKEN}}},
                             "models": [{"name": MODEL, "path": "models/tiny-student",
                                         "ray_actor_options": {"num_cpus": 0.5}}]}),
                  name="abuse", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        for model in (MODEL, abuse_cases.ON_DEMAND[0]):  # warm: the configured model and the neighbours' checkpoint
            httpx.post(url + "/evaluate", headers=AUTH, json={"model": model, "items": items[:4]}, timeout=300)
        abusers["corrupt jobs"] = [abuse_cases.corrupt_jobs(jobs, items[0], jobs_finished)]
        for name in chosen:
            neighbours = abuse_cases.ON_DEMAND[0] if name == "eviction" else MODEL
            phases[name] = run_phase(url, args.seconds, args.clients, abusers[name], items, neighbours)
            print(f"{name}: done", flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    print("| phase | requests | 2xx | 4xx | 5xx | no answer | neighbours p50 s | neighbours p99 s | /healthz worst s |")
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
    quiet = summary.get("quiet")
    if quiet:
        for name, r in summary.items():
            if name != "quiet":
                print(f"- {name}: neighbours' p50 {r['p50_s'] / quiet['p50_s']:.2f}x quiet, p99 "
                      f"{r['p99_s'] / quiet['p99_s']:.2f}x")
    print(f"- 5xx: {sum(r.get('5xx', 0) for r in summary.values())}, no answer: "
          f"{sum(r.get('no answer', 0) for r in summary.values())} (goal 0); /healthz worst: "
          f"{max(r['healthz_worst_s'] for r in summary.values()):.3f} s (goal <= 1 s)")
    print(f"- jobs ended: {jobs_finished} (goal: each done, failed or interrupted, results intact)")
    if held:
        print(f"- {held}")
    for name, r in summary.items():
        kinds = {k: v for k, v in r["by_kind"].items() if k != "normal"}
        if kinds:
            print(f"- {name}, status per kind: " + "; ".join(f"{k} {v}" for k, v in sorted(kinds.items())))
    print("\n" + json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "by_kind"} for k, v in summary.items()}))


if __name__ == "__main__":
    main()
