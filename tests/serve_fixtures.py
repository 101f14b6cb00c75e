"""The Serve fixture the Serve test modules share (registered in conftest.py's `pytest_plugins`):
`serve_app(args, name)` runs an app of `advdistill.serve.app.build_app(args)` on the session's Ray
cluster and gives its URL once /healthz answers; Serve shuts down at the end of the module (a
replica still holding CPUs would starve a later Ray Train run). The request checks that need no
Serve are tested without it, in tests/test_request_checks.py."""

from __future__ import annotations

import time
from typing import Any, Callable

import httpx
import pytest

from conftest import free_port


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
def serve_app(ray_cluster) -> Callable[..., str]:
    from ray import serve

    from advdistill.serve.app import build_app

    port = free_port()
    # One proxy, on the head: nodes a test adds on this machine would bind the same address.
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})

    def run(args: dict[str, Any], name: str, route_prefix: str = "/") -> str:
        serve.run(build_app(args), name=name, route_prefix=route_prefix)
        url = f"http://127.0.0.1:{port}{route_prefix.rstrip('/')}"
        wait_until_up(url + "/healthz")
        return url

    try:
        yield run
    finally:
        serve.shutdown()
