"""The storage layer (issue 14, item 1; `advdistill/storage.py`) against a real S3-compatible
server: moto's server mode on loopback, reached through pyarrow's S3 file system exactly as a
cluster reaches its bucket (`AWS_ENDPOINT_URL` and credentials in the environment, set only
inside these tests). No Ray, but for the last test: every node of a cluster runs this same code;
the last test trains on the bucket through a Ray job, as a cluster run does (issue 14, item 1)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from advdistill import storage
from advdistill.curate.store import CurateOutput, read_shards, shard_name, write_scored_batch, write_shard
from advdistill.schema import CuratedGroup, arrow_schema
from advdistill.storage import Location, location
from advdistill.train.loop import FAIL_AT_STEP_ENV

from conftest import REPO, TINY_STUDENT, free_port
from groups_fixture import write_groups

BUCKET = "advdistill-test"


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 with one bucket; the AWS variables point at it while the
    module's tests run and are restored afterwards. The server is its own process (`moto_server`):
    in-process, moto's Flask app leaves context-local proxies in sys.modules that raise on
    attribute probes, which breaks vLLM's kernel registration in every later test of the suite."""
    import boto3  # the test extra installs moto[server], which brings boto3

    executable = Path(sys.executable).parent / "moto_server"
    assert executable.exists(), "moto[server] (the test extra) is not installed in this environment"
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([str(executable), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}
    try:
        wait_until_listening(port, server, timeout=60)
        with pytest.MonkeyPatch.context() as mp:
            for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
                mp.delenv(key, raising=False)
            for key, value in env.items():
                mp.setenv(key, value)
            boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=BUCKET)
            yield f"s3://{BUCKET}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def wait_until_listening(port: int, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto_server exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"moto_server did not listen on {port} within {timeout:.0f} s")


@pytest.fixture
def root(s3, request) -> Location:
    """A fresh prefix of the bucket per test."""
    loc = location(f"{s3}/{request.node.name}")
    assert isinstance(loc, Location)
    return loc


# ------------------------------------------------------------------ naming, no server


def test_local_paths_and_file_uris_are_paths_and_other_schemes_are_locations(tmp_path):
    assert location(str(tmp_path)) == tmp_path and isinstance(location(str(tmp_path)), Path)
    assert location(f"file://{tmp_path}") == tmp_path
    assert not storage.is_uri("runs/tiny") and not storage.is_uri(f"file://{tmp_path}")
    assert storage.is_uri("s3://bucket/run") and storage.is_uri("gs://bucket/run")
    assert storage.uri("runs/x") == str(Path("runs/x").resolve())
    fs, path = storage.filesystem(tmp_path)
    assert isinstance(fs, pafs.LocalFileSystem) and path == str(tmp_path)


# ------------------------------------------------------------------ Location on S3


def test_location_names_join_and_parents(root):
    run = root / "run"
    shard = run / "curate" / "groups" / "abc.parquet"
    assert shard.uri == f"{root.uri}/run/curate/groups/abc.parquet"
    assert (shard.name, shard.stem, shard.suffix) == ("abc.parquet", "abc", ".parquet")
    assert shard.parent.parent == run / "curate" and str(shard.parent) == f"{run.uri}/curate/groups"
    assert run.joinpath("a", "b") == run / "a" / "b" and root / "/x/" == root / "x"
    assert storage.uri(run) == run.uri and storage.filesystem(run)[1] == f"{BUCKET}/{root.name}/run"
    assert location(run) is run and storage.resolved(run.uri) == run


def test_location_reads_writes_and_lists(root):
    run = root / "run"
    assert not run.exists() and not run.is_dir() and list(run.iterdir()) == [] and list(run.glob("*")) == []
    (run / "summary.json").write_text(json.dumps({"a": 1}))
    (run / "b.parquet").write_bytes(b"PAR1")
    (run / "a.parquet").write_bytes(b"PAR1")
    (run / "groups" / "x.parquet").write_bytes(b"x")
    assert run.is_dir() and run.exists() and not run.is_file()
    assert (run / "summary.json").is_file() and json.loads((run / "summary.json").read_text()) == {"a": 1}
    assert (run / "a.parquet").read_bytes() == b"PAR1"
    assert [p.name for p in run.iterdir()] == ["a.parquet", "b.parquet", "groups", "summary.json"]
    assert [p.name for p in run.glob("*.parquet")] == ["a.parquet", "b.parquet"]
    assert (run / "groups").is_dir() and [p.name for p in (run / "groups").glob("*.parquet")] == ["x.parquet"]
    with pytest.raises(ValueError):
        list(run.glob("groups/*.parquet"))  # one level only
    (run / "empty").mkdir(parents=True)
    assert (run / "empty").is_dir()
    with pytest.raises(FileExistsError):
        (run / "empty").mkdir()
    (run / "empty").mkdir(exist_ok=True)
    (run / "a.parquet").unlink()
    (run / "a.parquet").unlink(missing_ok=True)
    assert not (run / "a.parquet").exists()
    run.rmtree()
    assert not run.exists() and not (run / "groups" / "x.parquet").exists()


def test_write_atomic_on_s3_and_on_disk_leaves_one_whole_file(root, tmp_path):
    remote = root / "run.json"
    storage.write_atomic(remote, b"first")
    storage.write_atomic(remote, b"second")
    assert remote.read_bytes() == b"second"
    assert [p.name for p in root.iterdir()] == ["run.json"]
    local = tmp_path / "deep" / "run.json"
    storage.write_atomic(local, b"first")
    storage.write_atomic(local, b"second")
    assert local.read_bytes() == b"second"
    assert [p.name for p in local.parent.iterdir()] == ["run.json"]  # no temporary file left


def test_append_line_on_s3_and_on_disk(root, tmp_path):
    for runs in (root / "runs.jsonl", tmp_path / "runs.jsonl"):
        storage.append_line(runs, '{"run": 1}')
        storage.append_line(runs, '{"run": 2}\n')
        assert runs.read_text() == '{"run": 1}\n{"run": 2}\n'


# ------------------------------------------------------------------ folders between file systems


def make_model_folder(folder: Path) -> Path:
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "qwen2"}')
    (folder / "tokenizer.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(os.urandom(2048))
    (folder / "sub" / "extra.txt").write_text("x")
    return folder


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_copy_tree_to_s3_and_back_and_download(root, tmp_path):
    source = make_model_folder(tmp_path / "checkpoint")
    final = root / "train-sft" / "final"
    (final / "stale.txt").write_text("from an earlier export")
    storage.copy_tree(source, final)  # replaces what was there
    assert sorted(p.name for p in final.iterdir()) == ["config.json", "model.safetensors", "sub", "tokenizer.json"]
    assert (final / "sub" / "extra.txt").read_text() == "x"
    # from a (file system, path) pair, as a Ray Train checkpoint gives it
    again = root / "copy"
    storage.copy_tree(storage.filesystem(final), again)
    back = tmp_path / "back"
    storage.copy_tree(again, back)
    assert tree(back) == tree(source)
    downloaded = storage.download(final, tmp_path / "dl" / "final", skip=("*.safetensors",))
    assert set(tree(downloaded)) == {"config.json", "tokenizer.json", "sub/extra.txt"}
    assert [p.name for p in downloaded.parent.iterdir()] == ["final"]  # the temporary sibling is gone
    assert storage.download(final, downloaded) == downloaded  # there already: left as it is


def test_local_model_downloads_once_per_version(root, tmp_path, monkeypatch):
    monkeypatch.setenv(storage.MODEL_CACHE_ENV, str(tmp_path / "cache"))
    assert storage.local_model("Qwen/Qwen2.5-1.5B") == "Qwen/Qwen2.5-1.5B"
    assert storage.local_model(str(TINY_STUDENT)) == str(TINY_STUDENT)
    final = root / "final"
    storage.copy_tree(make_model_folder(tmp_path / "model"), final)
    first = storage.local_model(final.uri)
    assert Path(first).parent == tmp_path / "cache" and Path(first).name.startswith("final-")
    assert tree(Path(first)) == tree(tmp_path / "model")
    assert storage.local_model(final.uri) == first  # cached
    tokenizer_only = storage.local_model(final.uri, weights=False)
    assert tokenizer_only != first and "model.safetensors" not in tree(Path(tokenizer_only))
    assert "config.json" in tree(Path(tokenizer_only))
    (final / "config.json").write_text('{"model_type": "qwen2", "retrained": true}')  # a new export
    second = storage.local_model(final.uri)
    assert second != first and json.loads((Path(second) / "config.json").read_text())["retrained"]
    with pytest.raises(FileNotFoundError):
        storage.local_model((root / "missing").uri)


# ------------------------------------------------------------------ curated shards on a URI


def groups_table(tmp_path, tokenizer, cfg, n=12, seed=0) -> pa.Table:
    folder = write_groups(tmp_path / f"src-{n}-{seed}", tokenizer, cfg, n=n, seed=seed)
    return read_shards(CurateOutput(folder).groups)


def test_shards_written_and_read_back_through_a_uri(root, tmp_path, tiny_tokenizer, tiny_cfg):
    table = groups_table(tmp_path, tiny_tokenizer, tiny_cfg)
    folder = (root / "curate" / "groups").uri
    path = write_shard(folder, table)
    assert isinstance(path, Location) and path.name == shard_name(table.column("id").to_pylist())
    assert write_shard(folder, table) == path  # the same batch again: an overwrite, not a duplicate
    assert write_shard(folder, table.slice(0, 0)) is None
    back = read_shards(folder)
    assert back.schema == arrow_schema(CuratedGroup) and back.num_rows == table.num_rows
    assert back.sort_by("id").to_pylist() == table.sort_by("id").to_pylist()
    assert read_shards(folder, columns=["id"]).column_names == ["id"]
    assert read_shards((root / "nothing").uri) is None
    # pyarrow reads the folder as one dataset straight from S3, as Ray Data does
    fs, fs_path = storage.filesystem(folder)
    assert pq.read_table(fs_path, filesystem=fs, schema=arrow_schema(CuratedGroup)).num_rows == table.num_rows


def test_scored_batches_land_in_a_uri_curation_folder_once_each(root, tmp_path, tiny_tokenizer, tiny_cfg):
    """What the Ray Data pipeline's last stage does on any node: kept and dropped shards into the
    curation folder, only id / keep / tokens back to the driver; a retried batch overwrites."""
    table = groups_table(tmp_path, tiny_tokenizer, tiny_cfg, n=16, seed=1)
    keep = [i % 3 != 0 for i in range(table.num_rows)]  # some groups dropped
    table = table.set_column(table.schema.get_field_index("keep"), "keep", pa.array(keep))
    batches = [table.slice(0, 8), table.slice(8)]
    out = CurateOutput((root / "curate").uri)
    for batch in batches + batches[:1]:  # the first batch retried
        counted = write_scored_batch(batch, out.folder.uri)
        assert counted.column_names == ["id", "keep", "tokens"] and counted.num_rows == batch.num_rows
        assert counted.column("tokens").to_pylist() == [sum(x) for x in batch.column("token_lengths").to_pylist()]
    kept, dropped = read_shards(out.groups), read_shards(out.dropped)
    assert all(kept.column("keep").to_pylist()) and not any(dropped.column("keep").to_pylist())
    assert out.done_ids() == set(table.column("id").to_pylist())
    assert kept.num_rows + dropped.num_rows == table.num_rows == 16  # every id exactly once
    assert dropped.num_rows == keep.count(False)
    out.log_run({"run": 1})
    out.log_run({"run": 2})
    out.write_quarantine([{"line": 3, "reason": "not JSON"}])
    assert out.read_runs() == [{"run": 1}, {"run": 2}]
    assert json.loads(out.quarantine.read_text()) == {"line": 3, "reason": "not JSON"}
    assert out.read_summary() == {} and not out.is_complete()


def test_a_local_groups_folder_loads_with_hf_datasets(tmp_path, tiny_tokenizer, tiny_cfg):
    datasets = pytest.importorskip("datasets")
    table = groups_table(tmp_path, tiny_tokenizer, tiny_cfg, n=10, seed=2)
    out = CurateOutput(tmp_path / "curate")
    out.write_groups(table)
    files = sorted(str(p) for p in out.groups.glob("*.parquet"))
    ds = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path / "hf-cache"))
    kept = read_shards(out.groups)
    assert ds.num_rows == kept.num_rows > 0
    assert sorted(ds["id"]) == sorted(kept.column("id").to_pylist())
    row = ds.sort("id")[0]
    expected = kept.sort_by("id").slice(0, 1).to_pylist()[0]
    assert row["responses"] == expected["responses"] and row["advantages"] == pytest.approx(expected["advantages"])


def test_a_training_folder_on_a_uri_is_fingerprinted_refused_and_restarted(root, tmp_path, tiny_tokenizer, tiny_cfg):
    """issue 30.2 on a bucket: the groups opened and fingerprinted through the storage layer, a
    rerun with other settings refused naming them, `restart` removing only training's objects."""
    from advdistill.config import with_overrides
    from advdistill.rerun import RerunMismatch
    from advdistill.train.trainer import TrainOutput, claim_training

    groups = root / "curate" / "groups"
    storage.copy_tree(CurateOutput(write_groups(tmp_path / "curate", tiny_tokenizer, tiny_cfg, n=8)).groups, groups)
    out, table, _ = claim_training(tiny_cfg, groups.uri, (root / "train").uri, student=str(TINY_STUDENT), pages=True)
    assert isinstance(out.folder, Location) and table.identity["rows"] == 8
    assert json.loads((out.folder / "fingerprint.json").read_text())["fields"]["input.groups.rows"] == 8
    (out.checkpoints / "checkpoint_0").mkdir(parents=True, exist_ok=True)
    (out.checkpoints / "checkpoint_0" / "trainer_state.json").write_text("{}")
    out.result.write_text("{}")
    (out.folder / "notes.txt").write_text("mine")
    claim_training(tiny_cfg, groups.uri, out.folder.uri, student=str(TINY_STUDENT))  # the same: resumes
    other = with_overrides(tiny_cfg, {"train.lr": 1e-2})
    with pytest.raises(RerunMismatch, match="train.lr: 0.0003 → 0.01"):
        claim_training(other, groups.uri, out.folder.uri, student=str(TINY_STUDENT))
    assert out.result.is_file()
    claim_training(other, groups.uri, out.folder.uri, student=str(TINY_STUDENT), restart=True)
    assert not out.result.exists() and not (out.checkpoints / "checkpoint_0" / "trainer_state.json").exists()
    assert (out.folder / "notes.txt").read_text() == "mine"


def test_entry_point_path_checks_probe_a_uri_on_its_store(root, tmp_path):
    """`--output s3://…` is checked on the bucket (a probe object, removed again), never as a
    local folder named `s3:`; a missing input on a URI is the same one-line error as on disk."""
    from advdistill.cli import check_input_path, check_output_dir

    out = root / "run"
    assert check_output_dir(out.uri) == out.uri
    assert not list(out.iterdir()) if out.is_dir() else True  # the probe is gone
    assert not (Path.cwd() / "s3:").exists()
    (root / "groups").mkdir(parents=True, exist_ok=True)
    (root / "groups" / "a.parquet").write_bytes(b"x")
    assert check_input_path((root / "groups").uri, "groups folder").exists()
    with pytest.raises(SystemExit, match="does not exist"):
        check_input_path((root / "nowhere").uri, "groups folder")
    with pytest.raises(SystemExit, match="not writable"):
        check_output_dir("s3://no-such-bucket-here/run")


def test_a_model_field_naming_a_uri_is_checked_on_its_store(root, tmp_path):
    """`--set student=s3://…` is a model folder on the bucket (its config.json is there), checked
    before Ray starts like a local folder (issue 31.2)."""
    from advdistill.preflight import PreflightError, check_model

    storage.copy_tree(make_model_folder(tmp_path / "model"), root / "models" / "student")
    check_model("student", (root / "models" / "student").uri)
    with pytest.raises(PreflightError, match=r"^student = s3://.*/models/studnet.*: no config.json there, not a model"):
        check_model("student", (root / "models" / "studnet").uri)


# ------------------------------------------------------------------ training on a URI


@pytest.mark.slow
def test_training_checkpoints_resumes_and_exports_on_s3(ray_cluster, root, tmp_path, tiny_tokenizer, tiny_cfg):
    """`ray_jobs/train.py --groups s3://… --output s3://…` as a Ray job whose processes hold the
    bucket's credentials (a cluster's nodes get them from their instance profile): Ray Data reads
    the groups from the bucket, Ray Train keeps its checkpoints there, an injected failure at step
    3 restarts the worker group from the step-2 checkpoint read back from the bucket, and the
    final export and metrics land there."""
    from ray.job_submission import JobStatus, JobSubmissionClient
    from transformers import AutoModelForCausalLM, AutoTokenizer

    groups = root / "curate" / "groups"
    storage.copy_tree(CurateOutput(write_groups(tmp_path / "curate", tiny_tokenizer, tiny_cfg, n=8)).groups, groups)
    out = root / "train-advdistill"
    # 8 groups, 2 per step, one epoch: 4 steps on 2 workers, a checkpoint every 2.
    overrides = ["train.epochs=1", "train.groups_per_step=2", "train.num_workers=2", "train.resources.cpus_per_worker=1",
                 "train.val_fraction=0.0", "train.checkpoint_every=2", "train.report_every=1"]
    entrypoint = " ".join([sys.executable, str(REPO / "ray_jobs" / "train.py"), "--groups", groups.uri,
                           "--output", out.uri, *(f"--set {o}" for o in overrides)])
    credentials = {key: os.environ[key] for key in os.environ if key.startswith("AWS_")}  # the s3 fixture's
    client = JobSubmissionClient(ray_cluster.dashboard)
    deadline, job = time.time() + 120, None
    while job is None:  # the head's job agent answers a few seconds after the cluster starts
        try:
            job = client.submit_job(entrypoint=entrypoint,
                                    runtime_env={"env_vars": {**credentials, FAIL_AT_STEP_ENV: "3"}})
        except RuntimeError as error:
            if "No available agent" not in str(error) or time.time() > deadline:
                raise
            time.sleep(1)
    deadline, status = time.time() + 300, None
    while time.time() < deadline and status not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        time.sleep(1)
        status = client.get_job_status(job)
    logs = client.get_job_logs(job)
    assert status == JobStatus.SUCCEEDED, f"job {status}:\n{logs[-6000:]}"
    assert "injected failure at step 3" in logs

    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in history] == [1, 2, 3, 4]  # every step once: none lost, none twice
    starts = [m["resumed_from"] for m in history]  # where each step's worker group began
    assert starts[0] == 0 and starts[-1] > 0 and starts == sorted(starts)
    assert json.loads((out / "result.json").read_text())["step"] == 4
    assert list((out / "checkpoints").iterdir())  # Ray Train's storage is the bucket
    final = storage.download(out / "final", tmp_path / "final")
    ids = AutoTokenizer.from_pretrained(final)("<think>", return_tensors="pt").input_ids
    assert AutoModelForCausalLM.from_pretrained(final)(ids).logits.shape[:2] == ids.shape
