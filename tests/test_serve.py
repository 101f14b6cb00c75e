"""The evaluation API on real Ray Serve over loopback HTTP, with the tiny models: generation,
on-demand checkpoints, jobs, replicas that die, the `serve run` CLI. Every request check before
generation (the 4xx answers) is tested without Ray in tests/test_request_checks.py."""

import os
import shutil
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import yaml

from advdistill.config import ServeConfig
from advdistill.data.synthetic import make_split
from advdistill.serve.jobs import JobStore

from conftest import REPO, free_port
from groups_fixture import write_groups
from ray_nodes import agent_ports, new_temp_dir, start_node, stop_nodes
from serve_fixtures import wait_until_up

ITEMS = [{"question": r["question"], "reference": r["reference"], "task": "synthetic"} for r in make_split("test", 16)]


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
def jobs_folder(tmp_path_factory):
    return tmp_path_factory.mktemp("evaluation-jobs")


@pytest.fixture(scope="module")
def checkpoint_root(tmp_path_factory):
    """A checkpoint root with copies of the tiny models (tests add new checkpoints to it while the
    app runs), and a symlink that points out of it."""
    root = tmp_path_factory.mktemp("checkpoints")
    for name in ("tiny-student", "tiny-teacher"):
        shutil.copytree(REPO / "models" / name, root / "models" / name)
    (root / "escape").symlink_to(REPO / "models")
    return root


@pytest.fixture(scope="module")
def server(serve_app, data_root, jobs_folder, checkpoint_root):
    return serve_app({"config": str(REPO / "configs" / "tiny.yaml"), "checkpoint_root": str(checkpoint_root),
                      "data_root": str(data_root), "max_items": 1000, "max_request_tokens": 512,
                      "jobs_folder": str(jobs_folder), "max_concurrent_jobs": 1, "on_demand": True,
                      "max_models_per_replica": 2, "job_heartbeat_s": 1.0,
                      "checkpoints_ray_actor_options": {"num_cpus": 0.5},
                      "models": [{"name": "tiny-student", "path": "models/tiny-student", "base_model": False},
                                 {"name": "tiny-teacher", "path": "models/tiny-teacher", "base_model": True}]},
                     "advdistill")


def job_files(folder) -> JobStore:
    """The server's job files, as a later replica reads them."""
    return JobStore(folder, heartbeat_s=1.0, max_attempts=ServeConfig().job_attempts)


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


def test_a_new_checkpoint_is_evaluated_without_redeploying(server, checkpoint_root, tiny_cfg, tiny_tokenizer, tmp_path):
    """A checkpoint exported by the project's trainer after the app was deployed (what distill.py's
    train stage writes: `<run>/train-<method>/final`) is evaluated by naming its path: loaded on
    first use by the on-demand deployment (Ray Serve multiplexing), each engine in a process of its
    own. A copy of the configured model's folder gives that model's answers; the replica keeps
    serve.max_models_per_replica (2 here) engines, least recently used out."""
    from advdistill.config import with_overrides
    from advdistill.train.trainer import train

    body = {"items": ITEMS[:6], "sampling": {"max_tokens": 96}}
    configured = evaluate(server, {"model": "tiny-student", **body})
    assert configured.status_code == 200, configured.text
    # 2 optimizer steps of the real trainer (one 1-CPU worker beside the Serve replicas) into the root
    groups = write_groups(tmp_path / "groups", tiny_tokenizer, tiny_cfg, n=8)
    cfg = with_overrides(tiny_cfg, {"train.max_steps": 2, "train.groups_per_step": 4, "train.val_fraction": 0.0,
                                    "train.lr": 1e-3, "train.warmup_ratio": 0.0, "train.num_workers": 1,
                                    "train.resources.cpus_per_worker": 1})
    assert train(cfg, groups, checkpoint_root / "runs" / "a" / "train-advdistill")["step"] == 2
    shutil.copytree(checkpoint_root / "models" / "tiny-student", checkpoint_root / "runs/b/train-sft/final")
    first = evaluate(server, {"model": "runs/a/train-advdistill/final", **body})
    assert first.status_code == 200, first.text
    assert first.json()["model"] == "runs/a/train-advdistill/final" and len(first.json()["results"]) == 6
    # the trained weights answered, not the deployed model's
    assert [r["response"] for r in first.json()["results"]] != [r["response"] for r in configured.json()["results"]]
    listed = httpx.get(server + "/models").json()["on_demand"]
    assert listed["loaded"] == ["runs/a/train-advdistill/final"] and listed["max_per_replica"] == 2
    assert {"models/tiny-student", "models/tiny-teacher", "runs/a/train-advdistill/final",
            "runs/b/train-sft/final"} <= set(listed["available"])
    second = evaluate(server, {"model": "./runs/b/train-sft/final/", **body})
    assert second.status_code == 200, second.text
    assert [r["response"] for r in second.json()["results"]] == [r["response"] for r in configured.json()["results"]]
    assert httpx.get(server + "/models").json()["on_demand"]["loaded"] == ["runs/a/train-advdistill/final",
                                                                          "runs/b/train-sft/final"]
    # Nothing outside the root, nothing hidden (as named or once resolved), nothing that is not a model folder.
    (checkpoint_root / ".hidden").mkdir(exist_ok=True)
    shutil.copytree(checkpoint_root / "models" / "tiny-student", checkpoint_root / ".hidden" / "m", dirs_exist_ok=True)
    (checkpoint_root / "runs" / "shown").symlink_to(checkpoint_root / ".hidden" / "m")
    for bad in ("../checkpoints", "escape/tiny-student", "/etc", ".hidden/m", "runs/shown", "runs/a",
                "runs/none/final", "a\x00b"):
        response = evaluate(server, {"model": bad, **body})
        assert response.status_code in (404, 422), (bad, response.text)


def unloadable(root) -> list[str]:
    """Five folders under `root` that look like models and cannot load (no weights, garbage
    weights, a pickle, truncated safetensors, a broken config), as request names."""
    source, names = root / "models" / "tiny-student", ["no-weights", "garbage", "pickled", "truncated", "bad-config"]
    for name in names:
        shutil.copytree(source, root / "bad" / name, ignore=shutil.ignore_patterns("*.safetensors"))
    whole = (source / "model.safetensors").read_bytes()
    (root / "bad" / "garbage" / "model.safetensors").write_bytes(b"\x00" * 64)
    (root / "bad" / "pickled" / "pytorch_model.bin").write_bytes(b"\x80\x04\x95 a pickle")
    (root / "bad" / "truncated" / "model.safetensors").write_bytes(whole[: len(whole) // 2])
    (root / "bad" / "bad-config" / "model.safetensors").write_bytes(whole)
    (root / "bad" / "bad-config" / "config.json").write_text("{not json")
    return [f"bad/{name}" for name in names]


def gone(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_loading_and_evicting_checkpoints_never_breaks_another_ones_generation(server, checkpoint_root):
    """Issue 30.1, as found: c1 and c2 loaded, a long generation on c2, and c3 asked for (c1, the
    least recently used, is evicted and c3 loaded meanwhile). c2's request is answered and c2
    answers afterwards; c1's engine process has ended (its memory is back). An engine whose process
    died is replaced on its next request. Five folders that cannot load are a 404 "not a loadable
    checkpoint" on every route, with no traceback, colour codes, PID or address, and leave the
    loaded set as it was."""
    from ray import serve

    for name in ("c1", "c2", "c3"):
        shutil.copytree(checkpoint_root / "models" / "tiny-student", checkpoint_root / "runs" / name / "final")
    c1, c2, c3 = (f"runs/{name}/final" for name in ("c1", "c2", "c3"))
    short = {"items": ITEMS[:2], "sampling": {"max_tokens": 32}}
    for model in (c1, c2):
        assert evaluate(server, {"model": model, **short}).status_code == 200
    handle = serve.get_deployment_handle("checkpoints", app_name="advdistill")
    engines = handle.engines.remote().result()
    assert set(engines) == {c1, c2}
    long_items = [{"question": r["question"], "reference": r["reference"], "task": "synthetic"}
                  for r in make_split("test", 200, seed=11)]
    with ThreadPoolExecutor(1) as pool:
        long = pool.submit(evaluate, server, {"model": c2, "items": long_items, "sampling": {"max_tokens": 160}})
        third = evaluate(server, {"model": c3, **short})
        answered = long.result()
    assert third.status_code == 200, third.text
    assert answered.status_code == 200 and len(answered.json()["results"]) == 200, answered.text[:500]
    assert evaluate(server, {"model": c2, **short}).status_code == 200  # c2's engine still generates
    assert sorted(handle.loaded.remote().result()) == [c2, c3]
    deadline = time.time() + 60
    while not gone(engines[c1]) and time.time() < deadline:
        time.sleep(0.5)
    assert gone(engines[c1]), "the evicted engine's process is still running"
    # An engine whose process died (as the kernel's OOM killer ends one): its next request fails
    # cleanly, the one after loads it again.
    os.kill(handle.engines.remote().result()[c3], signal.SIGKILL)
    failed = evaluate(server, {"model": c3, **short})
    assert failed.status_code == 503 and "pid=" not in failed.text, failed.text
    assert evaluate(server, {"model": c3, **short}).status_code == 200
    loaded = sorted(handle.loaded.remote().result())
    for bad in unloadable(checkpoint_root):
        for path, body in (("/evaluate", {"model": bad, **short}), ("/evaluations", {"model": bad, **short}),
                           ("/v1/completions", {"model": bad, "prompt": "2+2=", "max_tokens": 4}),
                           ("/v1/chat/completions", {"model": bad, "messages": [{"role": "user", "content": "hi"}]})):
            response = httpx.post(server + path, json=body, timeout=120)
            assert response.status_code == 404 and "not a loadable checkpoint" in response.text, (bad, path, response.text)
            assert not any(leak in response.text for leak in ("Traceback", "\x1b[", "\\u001b", "pid=", "ip=")), response.text
    assert sorted(handle.loaded.remote().result()) == loaded


@pytest.fixture
def two_logical_gpus(ray_cluster):
    """A node with 2 logical GPUs and no CPU joined to the session's cluster for one test (only
    actors that ask for a GPU land on it), then stopped. Ray schedules its GPUs as a GPU node's; the
    engines compute on the CPU (FIELD-NOTES)."""
    import ray

    temp_dir = new_temp_dir()
    start_node([f"--address={ray_cluster.address}", "--node-ip-address=127.0.0.1", "--num-cpus=0", "--num-gpus=2",
                *agent_ports()], temp_dir)
    try:
        deadline = time.time() + 60
        while ray.cluster_resources().get("GPU", 0) < 2 and time.time() < deadline:
            time.sleep(0.5)
        yield
    finally:
        stop_nodes(temp_dir)


def test_three_models_share_two_logical_gpus_at_half_each_and_a_whole_gpu_each_is_refused(
        serve_app, server, two_logical_gpus, data_root, jobs_folder):
    """Issue 26.3: at serve.gpus_per_replica 1.0, three models do not fit two GPUs: build_app
    refuses in seconds, naming the numbers (replicas would otherwise wait forever); at 0.5 each
    they come up and answer, each replica holding half a GPU."""
    from ray import serve
    from ray.util.state import list_actors

    from advdistill.serve.app import build_app
    from advdistill.serve.capacity import GpuPlanError

    args = {"config": str(REPO / "configs" / "tiny.yaml"), "checkpoint_root": str(REPO), "data_root": str(data_root),
            "jobs_folder": str(jobs_folder / "gpu"),
            "models": [{"name": f"m{i}", "path": "models/tiny-student", "ray_actor_options": {"num_cpus": 0}}
                       for i in range(3)]}
    with pytest.raises(GpuPlanError) as refused:
        build_app({**args, "gpus_per_replica": 1.0})
    assert "3 engine(s) x serve.gpus_per_replica 1 = 3 GPU(s)" in str(refused.value)
    assert "2 GPU(s) on 2 node(s) = 2 slot(s)" in str(refused.value) and "lower serve.gpus_per_replica to 0.5" in str(
        refused.value)
    url = serve_app({**args, "gpus_per_replica": 0.5}, "gpu-plan", route_prefix="/gpu")
    try:
        for i in range(3):
            answer = evaluate(url, {"model": f"m{i}", "items": ITEMS[:1], "sampling": {"max_tokens": 8}})
            assert answer.status_code == 200, answer.text
        held = [a.required_resources for a in list_actors(filters=[("state", "=", "ALIVE")], detail=True)
                if "gpu-plan#model-m" in (a.name or "")]
        assert len(held) == 3 and all(r.get("GPU") == 0.5 for r in held), held
    finally:
        serve.delete("gpu-plan")


def test_openai_client_chat_completions_and_streams(server):
    """The official `openai` client against /v1: a chat completion is what /evaluate generates for
    the same prompt (both rendered with the model's chat template, greedy), a streamed one
    concatenates to the same text, and sampled completions with a seed stream what they return."""
    from advdistill.config import load_config

    client = openai.OpenAI(base_url=server + "/v1", api_key="unused")
    assert {"tiny-student", "tiny-teacher"} <= {m.id for m in client.models.list()}
    system = load_config(REPO / "configs" / "tiny.yaml").prompt.system_prompt
    item = ITEMS[0]
    messages = [{"role": "system", "content": system}, {"role": "user", "content": item["question"]}]
    chat = client.chat.completions.create(model="tiny-student", messages=messages, temperature=0, max_tokens=96)
    via_evaluate = evaluate(server, {"model": "tiny-student", "items": [item], "sampling": {"max_tokens": 96}}).json()
    assert chat.choices[0].message.content == via_evaluate["results"][0]["response"]
    assert chat.choices[0].finish_reason in ("stop", "length") and chat.usage.completion_tokens > 0
    assert chat.usage.prompt_tokens > 0 and chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens
    pieces = list(client.chat.completions.create(model="tiny-student", messages=messages, temperature=0, max_tokens=96,
                                                 stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in pieces if c.choices) == chat.choices[0].message.content
    assert len([c for c in pieces if c.choices and c.choices[0].delta.content]) > 1  # really incremental
    assert pieces[-1].usage.completion_tokens == chat.usage.completion_tokens
    prompt = "<|im_start|>user\n" + item["question"] + "<|im_end|>\n<|im_start|>assistant\n"
    sampled = client.completions.create(model="tiny-teacher", prompt=prompt, n=2, temperature=0.9, seed=7, max_tokens=64)
    assert len(sampled.choices) == 2 and {c.index for c in sampled.choices} == {0, 1}
    streamed = {0: "", 1: ""}
    for chunk in client.completions.create(model="tiny-teacher", prompt=prompt, n=2, temperature=0.9, seed=7,
                                           max_tokens=64, stream=True):
        for c in chunk.choices:
            streamed[c.index] += c.text
    assert streamed == {c.index: c.text for c in sampled.choices}
    whole = client.completions.create(model="tiny-teacher", prompt=prompt, temperature=0, max_tokens=64)
    stop = client.completions.create(model="tiny-teacher", prompt=prompt, temperature=0, max_tokens=64, stop=["\n"])
    assert "\n" in whole.choices[0].text and stop.choices[0].finish_reason == "stop"
    assert stop.choices[0].text == whole.choices[0].text.split("\n")[0]


def test_models_healthz_and_docs(server):
    models = httpx.get(server + "/models").json()["models"]
    assert {m["name"]: m["few_shot"] for m in models} == {"tiny-student": 0, "tiny-teacher": 0}
    assert httpx.get(server + "/healthz").json() == {"status": "ok"}
    spec = httpx.get(server + "/openapi.json").json()
    # Every route says what it returns (clients are generated from this), not an untyped object.
    returns = {(method, path): next(r for code, r in ops[method]["responses"].items() if code.startswith("2"))
               ["content"]["application/json"]["schema"].get("$ref", "").rsplit("/", 1)[-1]
               for path, ops in spec["paths"].items() for method in ops}
    assert returns == {("get", "/healthz"): "Health", ("get", "/models"): "ModelList",
                       ("post", "/evaluate"): "EvaluateResponse", ("post", "/evaluations"): "EvaluationJob",
                       ("get", "/evaluations/{job_id}"): "EvaluationJob", ("get", "/v1/models"): "OpenAIModelList",
                       ("get", "/v1/models/{model}"): "OpenAIModel",
                       ("post", "/v1/completions"): "Completion", ("post", "/v1/chat/completions"): "ChatCompletion"}
    assert httpx.get(server + "/docs").status_code == 200


def test_dataset_file_inside_the_data_root(server):
    response = evaluate(server, {"model": "tiny-teacher", "dataset": {"name": "gsm8k", "split": "test", "path": "gsm8k-3.jsonl"},
                                 "sampling": {"max_tokens": 32}})
    assert response.status_code == 200, response.text
    assert len(response.json()["results"]) == 3


def test_32_concurrent_clients_all_succeed(server):
    def one(i):
        return evaluate(server, {"model": "tiny-student" if i % 2 else "tiny-teacher", "items": ITEMS[i % 15 : i % 15 + 2]})

    with ThreadPoolExecutor(32) as pool:
        responses = list(pool.map(one, range(32)))
    assert [r.status_code for r in responses] == [200] * 32
    assert all(len(r.json()["results"]) == 2 for r in responses)


def test_evaluation_job_runs_in_the_background_and_matches_evaluate(server, jobs_folder):
    """POST /evaluations answers at once with a job; polling shows progress and then the same
    answer /evaluate gives for the same items; the state is a file that outlives the replica;
    a second job beyond serve.max_concurrent_jobs (1 here) is a 429; bad bodies are refused at
    submission, unknown ids are 404."""
    items = [{"question": r["question"], "reference": r["reference"], "task": "synthetic"}
             for r in make_split("test", 40, seed=5)]
    body = {"model": "tiny-student", "items": items, "sampling": {"max_tokens": 96}}
    submitted = httpx.post(server + "/evaluations", json=body, timeout=60)
    assert submitted.status_code == 202, submitted.text
    job = submitted.json()
    assert job["status"] in ("queued", "running") and job["total"] == 40 and job["result"] is None
    busy = httpx.post(server + "/evaluations", json=body, timeout=60)
    assert busy.status_code == 429 and busy.headers["retry-after"]
    assert httpx.post(server + "/evaluations", json={**body, "model": "nope"}, timeout=60).status_code == 404
    seen = set()
    deadline = time.time() + 300
    while job["status"] in ("queued", "running") and time.time() < deadline:
        time.sleep(0.3)
        job = httpx.get(f"{server}/evaluations/{job['id']}", timeout=30).json()
        seen.add((job["status"], job["done"]))
    assert job["status"] == "done", job
    assert job["done"] == job["total"] == 40
    direct = evaluate(server, body).json()
    assert job["result"]["metrics"] == direct["metrics"]
    assert [r["response"] for r in job["result"]["results"]] == [r["response"] for r in direct["results"]]
    assert job_files(jobs_folder).read(job["id"])["result"] == job["result"]  # on disk, for any later replica
    for unknown in ("0" * 32, "not-a-job-id"):
        assert httpx.get(f"{server}/evaluations/{unknown}", timeout=30).status_code == 404


def test_a_job_finishes_when_its_model_replica_is_killed_under_it(server, jobs_folder):
    """A 1,000-item evaluation as a job; the model replica dies while a chunk is on it (ray.kill,
    as an OOM or a lost node would): Serve starts another, the chunk is retried there, the job
    ends with every item and the same answers as an undisturbed /evaluate, and its result is
    fetched again later from its file."""
    import ray

    def replicas():
        return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                      if a["name"].startswith("SERVE_REPLICA::advdistill#model-tiny-student#"))

    before = replicas()
    assert before
    body = {"model": "tiny-student", "dataset": {"name": "synthetic", "split": "test", "limit": 1000},
            "sampling": {"max_tokens": 160}}
    job = httpx.post(server + "/evaluations", json=body, timeout=60).json()
    while job["status"] == "queued" or (job["status"] == "running" and job["done"] == 0):
        time.sleep(0.2)
        job = httpx.get(f"{server}/evaluations/{job['id']}", timeout=30).json()
    for name in before:
        ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
    deadline = time.time() + 600
    while job["status"] in ("queued", "running") and time.time() < deadline:
        time.sleep(0.5)
        job = httpx.get(f"{server}/evaluations/{job['id']}", timeout=30).json()
    assert job["status"] == "done", job
    assert job["total"] == job["done"] == len(job["result"]["results"]) == 1000
    assert set(replicas()).isdisjoint(before)  # it really ran on a new replica
    direct = evaluate(server, body).json()
    assert [r["response"] for r in job["result"]["results"]] == [r["response"] for r in direct["results"]]
    later = httpx.get(f"{server}/evaluations/{job['id']}", timeout=30).json()
    assert later["result"] == job["result"] == job_files(jobs_folder).read(job["id"])["result"]


def test_a_job_starts_again_on_a_new_api_replica_when_its_replica_dies(server, jobs_folder):
    """The API replica running a job is killed (ray.kill, as a crash or a lost node would): Serve
    starts another, which finds the job's file silent for 6 heartbeats, claims it, and runs it again
    from its saved request; the job ends done, with the same answers as an undisturbed /evaluate."""
    import ray

    def api_replicas():
        return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                      if a["name"].startswith("SERVE_REPLICA::advdistill#EvaluateAPI#"))

    def poll(job_id):
        try:
            answer = httpx.get(f"{server}/evaluations/{job_id}", timeout=30)
        except httpx.HTTPError:
            return None  # no API replica for a moment
        return answer.json() if answer.status_code == 200 else None

    before = api_replicas()
    assert len(before) == 1
    body = {"model": "tiny-student", "dataset": {"name": "synthetic", "split": "test", "limit": 1000},
            "sampling": {"max_tokens": 160}}
    job = httpx.post(server + "/evaluations", json=body, timeout=60).json()
    while job["status"] == "queued":
        time.sleep(0.1)
        job = poll(job["id"]) or job
    assert job["status"] == "running" and job["done"] < job["total"], job  # its file says running too
    ray.kill(ray.get_actor(before[0], namespace="serve"), no_restart=True)
    deadline, seen = time.time() + 600, []
    while time.time() < deadline:
        time.sleep(0.5)
        job = poll(job["id"]) or job
        seen.append(job["status"])
        if job["status"] not in ("queued", "running"):
            break
    assert job["status"] == "done", job
    assert job["attempts"] == 2 and job["total"] == job["done"] == len(job["result"]["results"]) == 1000
    assert set(api_replicas()).isdisjoint(before)
    direct = evaluate(server, body).json()
    assert [r["response"] for r in job["result"]["results"]] == [r["response"] for r in direct["results"]]


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
        assert httpx.get(url + "/v1/models").status_code == 401  # the OpenAI routes take the same token
        assert httpx.post(url + "/v1/chat/completions", json={}).status_code == 401
        client = openai.OpenAI(base_url=url + "/v1", api_key="s3cret")
        assert {m.id for m in client.models.list()} >= {"tiny-teacher", "tiny-student"}
        # SIGINT while a long request is being served: `serve run` stops in seconds (it ignored
        # SIGINT for 120 s while a replica was blocked).
        long = threading.Thread(target=lambda: _quietly(lambda: httpx.post(
            url + "/evaluate", headers={"Authorization": "Bearer s3cret"}, timeout=120,
            json={"model": "tiny-teacher", "dataset": {"name": "synthetic", "split": "test", "limit": 1000}})), daemon=True)
        long.start()
        time.sleep(3)
        assert httpx.get(url + "/healthz", timeout=5).status_code == 200
        start = time.perf_counter()
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=60)
        stopped = time.perf_counter() - start
        assert stopped < 25, f"serve run took {stopped:.1f} s to stop after SIGINT"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            process.wait(timeout=60)
        serve.shutdown()


def _quietly(call):
    try:
        call()
    except httpx.HTTPError:
        pass

