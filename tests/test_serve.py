"""The evaluation API on real Ray Serve over loopback HTTP, with the tiny models."""

import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml

from advdistill.data.synthetic import make_split

from conftest import REPO, free_port

ITEMS = [{"question": r["question"], "reference": r["reference"], "task": "synthetic"} for r in make_split("test", 16)]


def wait_until_up(url: str, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(url)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory, shared_data):
    root = tmp_path_factory.mktemp("data-root")
    lines = (shared_data / "gsm8k" / "test.jsonl").read_text().splitlines()[:3]
    (root / "gsm8k-3.jsonl").write_text("\n".join(lines) + "\n")
    secret = tmp_path_factory.mktemp("outside") / "secret.jsonl"
    secret.write_text(lines[0] + "\n")
    (root / "link.jsonl").symlink_to(secret)
    return root


@pytest.fixture(scope="module")
def server(ray_cluster, data_root):
    from ray import serve

    from advdistill.serve.app import build_app

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app = build_app({"config": str(REPO / "configs" / "tiny.yaml"), "checkpoint_root": str(REPO),
                     "data_root": str(data_root), "max_items": 40, "max_tokens_limit": 512,
                     "models": [{"name": "tiny-student", "path": "models/tiny-student", "base_model": False},
                                {"name": "tiny-teacher", "path": "models/tiny-teacher", "base_model": True}]})
    serve.run(app, name="advdistill", route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    wait_until_up(url + "/healthz")
    yield url
    serve.shutdown()  # a Serve replica holding CPUs would starve later Ray Train runs


def evaluate(url, body, **kwargs):
    return httpx.post(url + "/evaluate", json=body, timeout=300, **kwargs)


def test_items_and_dataset_match_the_offline_evaluator(server, offline_test_metrics):
    _, offline = offline_test_metrics
    by_items = evaluate(server, {"model": "tiny-student", "items": ITEMS})
    by_name = evaluate(server, {"model": "tiny-student", "dataset": {"name": "synthetic", "split": "test", "limit": 16}})
    for response in (by_items, by_name):
        assert response.status_code == 200, response.text
        body = response.json()
        assert len(body["results"]) == 16
        for key in ("n", "accuracy", "mean_tokens_correct", "mean_tokens_incorrect", "verbosity_ratio",
                    "degeneracy", "degeneracy_correct", "degeneracy_incorrect", "template"):
            assert body["metrics"][key] == offline[key], key


def test_models_healthz_and_docs(server):
    models = httpx.get(server + "/models").json()["models"]
    assert {m["name"]: m["few_shot"] for m in models} == {"tiny-student": 0, "tiny-teacher": 0}
    assert httpx.get(server + "/healthz").json() == {"status": "ok"}
    assert "/evaluate" in httpx.get(server + "/openapi.json").json()["paths"]
    assert httpx.get(server + "/docs").status_code == 200


def test_dataset_file_inside_the_data_root(server):
    response = evaluate(server, {"model": "tiny-teacher", "dataset": {"name": "gsm8k", "split": "test", "path": "gsm8k-3.jsonl"},
                                 "sampling": {"max_tokens": 32}})
    assert response.status_code == 200, response.text
    assert len(response.json()["results"]) == 3


@pytest.mark.parametrize(
    "body, status, needle",
    [
        ({"items": ITEMS[:1]}, 422, "model"),
        ({"model": "tiny-student"}, 422, "exactly one"),
        ({"model": "tiny-student", "items": ITEMS[:1], "dataset": {"name": "synthetic", "split": "test"}}, 422, "exactly one"),
        ({"model": "tiny-student", "items": [{"question": "q", "task": "nope"}]}, 422, "task"),
        ({"model": "tiny-student", "items": [{"question": "q", "task": "mmlu_pro", "choices": list("ABCDEFGHIJK")}]}, 422, "choices"),
        ({"model": "tiny-student", "items": ITEMS[:1], "sampling": {"temperature": -1}}, 422, "temperature"),
        ({"model": "no-such-model", "items": ITEMS[:1]}, 404, "unknown model"),
        ({"model": "../models/tiny-student", "items": ITEMS[:1]}, 404, "unknown model"),
        ({"model": "tiny-student", "items": ITEMS[:1] * 41}, 413, "limit of 40"),
        ({"model": "tiny-student", "items": ITEMS[:1], "sampling": {"max_tokens": 513}}, 413, "max_tokens"),
        ({"model": "tiny-student", "dataset": {"name": "synthetic", "split": "test", "limit": 41}}, 413, "limit"),
        ({"model": "tiny-student", "dataset": {"name": "synthetic", "split": "test"}}, 413, "limit of 40"),
        ({"model": "tiny-student", "dataset": {"name": "gsm8k", "split": "test", "path": "../outside/secret.jsonl"}}, 404, "not found"),
        ({"model": "tiny-student", "dataset": {"name": "gsm8k", "split": "test", "path": "/etc/passwd"}}, 404, "not found"),
        ({"model": "tiny-student", "dataset": {"name": "gsm8k", "split": "test", "path": "link.jsonl"}}, 404, "not found"),
        ({"model": "tiny-student", "dataset": {"name": "gsm8k", "split": "dev", "path": "gsm8k-3.jsonl"}}, 404, "splits"),
    ],
)
def test_bad_requests_get_clear_errors_and_the_server_keeps_serving(server, body, status, needle):
    response = evaluate(server, body)
    assert response.status_code == status, response.text
    assert needle in response.text
    assert evaluate(server, {"model": "tiny-student", "items": ITEMS[:1], "sampling": {"max_tokens": 16}}).status_code == 200


def test_32_concurrent_clients_all_succeed(server):
    def one(i):
        return evaluate(server, {"model": "tiny-student" if i % 2 else "tiny-teacher", "items": ITEMS[i % 15 : i % 15 + 2]})

    with ThreadPoolExecutor(32) as pool:
        responses = list(pool.map(one, range(32)))
    assert [r.status_code for r in responses] == [200] * 32
    assert all(len(r.json()["results"]) == 2 for r in responses)


def test_serve_run_cli_with_token_auth(server, ray_cluster, tmp_path):
    """`serve run serve_configs/evaluate.yaml` (the real CLI) answers; a configured token is enforced."""
    from ray import serve

    serve.shutdown()
    port = free_port()
    config = yaml.safe_load((REPO / "serve_configs" / "evaluate.yaml").read_text())
    config["http_options"]["port"] = port
    app = config["applications"][0]
    app["runtime_env"] = {"env_vars": {"ADVDISTILL_API_TOKEN": "s3cret"}}
    path = tmp_path / "evaluate.yaml"
    path.write_text(yaml.safe_dump(config))
    process = subprocess.Popen([shutil.which("serve") or "serve", "run", "--address", ray_cluster.address, str(path)],
                               cwd=REPO, env=dict(os.environ), start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_up(url + "/healthz")
        assert httpx.get(url + "/models").status_code == 401
        assert httpx.get(url + "/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = httpx.get(url + "/models", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and {m["name"] for m in ok.json()["models"]} == {"tiny-teacher", "tiny-student"}
    finally:
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=60)
        serve.shutdown()
