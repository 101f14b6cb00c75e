"""The abusers of bench/abuse.py's phases beyond issue 15's request mix (issue 30.6): each is a
function `abuser(url, stop, record)` run in its own thread until `stop` is set, calling
`record(kind, status)` for every request it sends (status None: no answer). Setup helpers make the
checkpoint root (copies of the tiny student, and folders that cannot load) the app serves on demand.
"""

from __future__ import annotations

import json
import shutil
import socket
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import httpx

TOKEN = "bench-abuse-token"
AUTH = {"Authorization": f"Bearer {TOKEN}", "content-type": "application/json"}
ON_DEMAND = ["runs/c1/final", "runs/c2/final", "runs/c3/final", "runs/c4/final"]  # c1: the neighbours'
UNLOADABLE = ["bad/no-weights", "bad/garbage", "bad/pickled", "bad/truncated", "bad/bad-config"]
Record = Callable[[str, "int | None"], None]


def checkpoint_root(repo: Path, root: Path) -> Path:
    """Copies of the tiny student to load on demand, and five folders that look like models and
    cannot load (no weights, garbage weights, a pickle, truncated safetensors, a broken config)."""
    source = repo / "models" / "tiny-student"
    for name in ON_DEMAND:
        shutil.copytree(source, root / name)
    for name in UNLOADABLE:
        shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("*.safetensors"))
    whole = (source / "model.safetensors").read_bytes()
    (root / "bad/garbage/model.safetensors").write_bytes(b"\0" * 64)
    (root / "bad/pickled/pytorch_model.bin").write_bytes(b"\x80\x04\x95 a pickle")
    (root / "bad/truncated/model.safetensors").write_bytes(whole[: len(whole) // 2])
    (root / "bad/bad-config/model.safetensors").write_bytes(whole)
    (root / "bad/bad-config/config.json").write_text("{not json")
    return root


def _post(http: httpx.Client, url: str, body: dict, record: Record, kind: str) -> httpx.Response | None:
    try:
        response = http.post(url, json=body, headers=AUTH)
    except httpx.HTTPError:
        record(kind, None)
        return None
    record(kind, response.status_code)
    return response


def eviction(item: dict) -> Callable:
    """Loads c2, c3, c4 in turn (each evicts the engine loaded before it) while the neighbours
    generate on c1: a load or an eviction must never break c1's generation."""
    def abuser(url: str, stop: threading.Event, record: Record) -> None:
        with httpx.Client(timeout=300) as http:
            n = 0
            while not stop.is_set():
                model = ON_DEMAND[1 + n % 3]
                _post(http, url + "/evaluate", {"model": model, "items": [item], "sampling": {"max_tokens": 16}},
                      record, "load another checkpoint")
                n += 1
    return abuser


def failing_loads(item: dict) -> Callable:
    """Folders that cannot load, on every route: each a 404, remembered, nothing evicted."""
    def abuser(url: str, stop: threading.Event, record: Record) -> None:
        with httpx.Client(timeout=120) as http:
            n = 0
            while not stop.is_set():
                model = UNLOADABLE[n % len(UNLOADABLE)]
                route, body = [("/evaluate", {"model": model, "items": [item]}),
                               ("/v1/completions", {"model": model, "prompt": "2+2=", "max_tokens": 4}),
                               ("/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": "hi"}]}),
                               ("/evaluations", {"model": model, "items": [item]})][n % 4]
                _post(http, url + route, body, record, f"unloadable on {route}")
                n += 1
    return abuser


def job_race(items: list[dict], finished: dict) -> Callable:
    """Bursts of 32 concurrent POST /evaluations (at most serve.max_concurrent_jobs run), then
    every accepted job polled to its end: `finished` counts how each ended, and whether its result
    holds every item."""
    def abuser(url: str, stop: threading.Event, record: Record) -> None:
        with httpx.Client(timeout=120) as http, ThreadPoolExecutor(32) as pool:
            while not stop.is_set():
                body = {"model": "tiny-student", "items": items[:4], "sampling": {"max_tokens": 32}}
                answers = list(pool.map(lambda _: _post(http, url + "/evaluations", body, record, "job burst of 32"),
                                        range(32)))
                for job in [a.json() for a in answers if a is not None and a.status_code == 202]:
                    while True:
                        try:
                            polled = http.get(f"{url}/evaluations/{job['id']}", headers=AUTH)
                        except httpx.HTTPError:
                            record("job poll", None)
                            break
                        record("job poll", polled.status_code)
                        state = polled.json() if polled.status_code == 200 else {"status": f"HTTP {polled.status_code}"}
                        if state["status"] not in ("queued", "running"):
                            intact = state["status"] == "done" and len(state["result"]["results"]) == 4
                            key = f"{state['status']}{'' if intact or state['status'] != 'done' else ' (result incomplete)'}"
                            finished[key] = finished.get(key, 0) + 1
                            break
                        time.sleep(0.2)
    return abuser


def corrupt_jobs(jobs_folder: Path, item: dict, finished: dict) -> Callable:
    """Rows that cannot be read (not UTF-8, a list, null, no id, not JSON) in the job database:
    a GET on one is a 404, and jobs submitted meanwhile still run to their end."""
    bad = {f"{i:032x}": state for i, state in enumerate([b"\xff\xfe", b"[]", b"null", b'{"model": "m"}', b"{"], 1)}
    with sqlite3.connect(jobs_folder / "jobs.sqlite3") as db:
        for job_id, state in bad.items():
            db.execute("INSERT OR REPLACE INTO jobs VALUES (?, 'running', 1, 0, ?, ?)", (job_id, state, b"{}"))

    def abuser(url: str, stop: threading.Event, record: Record) -> None:
        with httpx.Client(timeout=120) as http:
            n = 0
            while not stop.is_set():
                try:
                    status = http.get(f"{url}/evaluations/{list(bad)[n % len(bad)]}", headers=AUTH).status_code
                except httpx.HTTPError:
                    status = None
                record("GET an unreadable job", status)
                if n % 10 == 0:
                    answer = _post(http, url + "/evaluations", {"model": "tiny-student", "items": [item]}, record,
                                   "job beside unreadable rows")
                    if answer is not None and answer.status_code == 202:
                        job_id = answer.json()["id"]
                        while True:
                            try:
                                state = http.get(f"{url}/evaluations/{job_id}", headers=AUTH).json()
                            except (httpx.HTTPError, ValueError):
                                state = {"status": "no answer"}
                            if state["status"] not in ("queued", "running"):
                                finished[state["status"]] = finished.get(state["status"], 0) + 1
                                break
                            time.sleep(0.2)
                n += 1
    return abuser


def huge_prompts() -> Callable:
    """64 prompts of 100,000 characters (6.4 MB) to /v1/completions: refused by counting
    characters (413), never tokenized."""
    body = json.dumps({"model": "tiny-student", "prompt": ["word " * 20_000] * 64, "max_tokens": 4}).encode()

    def abuser(url: str, stop: threading.Event, record: Record) -> None:
        with httpx.Client(timeout=120) as http:
            while not stop.is_set():
                try:
                    record("6.4 MB of prompts", http.post(url + "/v1/completions", content=body, headers=AUTH).status_code)
                except httpx.HTTPError:
                    record("6.4 MB of prompts", None)
    return abuser


def slow_clients(port: int, held: dict) -> Callable:
    """200 connections that send half a request line and stop (slow headers: held by the HTTP
    server, which Serve gives no header timeout), and bodies trickled a byte a second (cut at
    serve.body_timeout_s with a 408). `held` counts the header connections still open at the end."""
    def trickle(record: Record, stop: threading.Event) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
            s.sendall(b"POST /evaluate HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
                      + b"\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{")
            s.settimeout(1.0)
            while not stop.is_set():
                try:
                    answer = s.recv(200)
                    record("trickled body", int(answer.split()[1]) if answer else None)
                    return
                except socket.timeout:
                    try:
                        s.sendall(b" ")
                    except OSError:
                        record("trickled body", None)
                        return
            # The phase ended before serve.body_timeout_s ran out: the benchmark cut this one, not
            # the server, so it is not counted (it was counted as "no answer" until 2026-12-07).

    def abuser(url: str, stop: threading.Event, record: Record) -> None:
        sockets = []
        for _ in range(200):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(b"GET /healthz HT")  # never finished
            sockets.append(s)
        while not stop.is_set():
            trickle(record, stop)
        open_now = 0
        for s in sockets:
            s.setblocking(False)
            try:
                open_now += 0 if s.recv(1) == b"" else 1  # b"": the server closed it
            except BlockingIOError:
                open_now += 1  # nothing to read, not closed: still held
            except OSError:
                pass
            s.close()
        held["slow headers still held"] = open_now
    return abuser
