"""cluster.yaml has what `ray up` needs to start an authenticated cluster whose nodes share
storage and versions (issue 14, item 5), read against Ray's own config handling: the token made
on the launching machine is mounted on every node and token auth is on everywhere; the sync
honours .gitignore (no .venv/, no runs/); every node gets the client's Ray and this checkout;
nodes reach the shared S3 bucket through instance profiles; node types carry the custom
resources the stages' `resources.custom_resources` / `serve.custom_resources` ask for. (The schema test is in
tests/test_experiment_configs.py; the same node types autoscale in tests/test_autoscaler.py.)"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import ray
import yaml

from advdistill.config import load_config

REPO = Path(__file__).resolve().parents[1]
RAW = yaml.safe_load((REPO / "cluster.yaml").read_text())
TEXT = (REPO / "cluster.yaml").read_text()
WORKER_TYPES = {name: t for name, t in RAW["available_node_types"].items() if name != RAW["head_node_type"]}
STAGE_RESOURCES = {"curate.resources.custom_resources": "inference", "eval.resources.custom_resources": "inference",
                   "train.resources.custom_resources": "train", "serve.custom_resources": "serve"}


def commands(*keys: str) -> str:
    return "\n".join(c for key in keys for c in RAW.get(key) or [])


def test_one_token_is_mounted_on_every_node_and_required_everywhere():
    home = f"/home/{RAW['auth']['ssh_user']}"
    mounts = {remote: local for remote, local in RAW["file_mounts"].items() if remote.endswith(".ray/auth_token")}
    # Ray's token-auth guide: the token file made by `ray get-auth-token --generate` on the
    # launching machine, mounted at the default path on every node (file_mounts reach workers too).
    assert mounts == {f"{home}/.ray/auth_token": "~/.ray/auth_token"}
    init = commands("initialization_commands")
    assert "RAY_AUTH_MODE=token" in init and "RAY_AUTH_TOKEN_PATH=$HOME/.ray/auth_token" in init
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in RAW[key] if "ray start" in c or "serve start" in c]
        assert starts, key
        for command in starts:  # explicit on every start, whatever the login shell reads
            assert "RAY_AUTH_MODE=token" in command and "RAY_AUTH_TOKEN_PATH=$HOME/.ray/auth_token" in command
    assert "chmod 600 ~/.ray/auth_token" in commands("setup_commands")
    assert "disabled" not in TEXT.replace("# ", "") and "RAY_AUTH_TOKEN=" not in TEXT  # never a token in the file


def test_the_code_sync_honours_gitignore_so_venv_and_runs_never_ship():
    from ray.autoscaler._private.command_runner import SSHCommandRunner

    assert RAW["file_mounts"]["~/advdistill"] == "."
    assert ".gitignore" in RAW["rsync_filter"]
    options = {"rsync_filter": RAW["rsync_filter"], "rsync_exclude": RAW["rsync_exclude"]}
    args = SSHCommandRunner._create_rsync_filter_args(None, options)  # what `ray up` hands rsync
    assert ["--filter", "dir-merge,- .gitignore"] == args[args.index("--filter"):args.index("--filter") + 2]
    assert {".venv", "runs"} <= set(RAW["rsync_exclude"])
    # .gitignore itself ignores them (rsync's dir-merge reads it with git's meaning).
    ignored = subprocess.run(["git", "check-ignore", ".venv/bin/python", "runs/tiny/run.json"], cwd=REPO,
                             capture_output=True, text=True)
    assert ignored.stdout.split() == [".venv/bin/python", "runs/tiny/run.json"]
    assert RAW.get("file_mounts_sync_continuously") is False


def test_every_node_installs_the_clients_ray_and_this_checkout():
    setup = commands("setup_commands")
    pins = set(re.findall(r"RAY_VERSION=([\w.]+)", setup)) | set(re.findall(r"ray\.__version__ == '([\w.]+)'", setup))
    assert pins == {ray.__version__}, f"cluster.yaml pins Ray {pins}, this client runs {ray.__version__}"
    assert '"ray[default,data,train,serve]==$RAY_VERSION"' in setup and ">=" not in setup
    assert "-c ~/ray-constraint.txt -e \".[gpu]\"" in setup and "cd ~/advdistill" in setup  # the synced checkout
    # Every node type runs the same setup (no per-type override that could install another Ray).
    assert all("setup_commands" not in t and "worker_setup_commands" not in t for t in RAW["available_node_types"].values())


def test_nodes_share_an_s3_bucket_through_instance_profiles():
    head = RAW["available_node_types"][RAW["head_node_type"]]["node_config"]["IamInstanceProfile"]["Arn"]
    assert head.endswith("instance-profile/advdistill-head")
    for name, node_type in WORKER_TYPES.items():
        assert node_type["node_config"]["IamInstanceProfile"]["Arn"].endswith("instance-profile/advdistill-node"), name
    for needed in ("s3://BUCKET/runs", "s3:GetObject", "s3:PutObject", "s3:ListBucket", "iam:PassRole"):
        assert needed in TEXT, needed
    assert "AWS_SECRET_ACCESS_KEY" not in TEXT


def test_node_types_carry_the_custom_resources_the_stages_ask_for():
    head = RAW["available_node_types"][RAW["head_node_type"]]
    assert head["resources"] == {}  # nothing that asks for a custom resource lands on the head
    owners = {}
    for name, node_type in WORKER_TYPES.items():
        assert node_type["min_workers"] == 0 and 0 < node_type["max_workers"] <= RAW["max_workers"], name
        for resource, amount in node_type["resources"].items():
            assert amount >= 1
            owners.setdefault(resource, []).append(name)
    assert sorted(owners) == ["inference", "serve", "train"] and all(len(v) == 1 for v in owners.values())
    # The overrides cluster.yaml's header (and README "Cluster") give are valid config.
    overrides = [f"{key}={{{resource}: 1}}" for key, resource in STAGE_RESOURCES.items()]
    cfg = load_config(REPO / "configs" / "paper-gsm8k.yaml", overrides)
    assert cfg.curate.resources.custom_resources == cfg.eval.resources.custom_resources == {"inference": 1.0}
    assert cfg.train.resources.custom_resources == {"train": 1.0} and cfg.serve.custom_resources == {"serve": 1.0}
    for key, resource in STAGE_RESOURCES.items():
        assert f"--set {key}='{{{resource}: 1}}'" in TEXT, key


@pytest.mark.parametrize("name", sorted(WORKER_TYPES))
def test_spot_only_where_the_stage_resumes(name):
    spot = "InstanceMarketOptions" in WORKER_TYPES[name]["node_config"]
    assert spot == (name != "serve_gpu")  # curation and training resume; a serving replica would vanish


def test_the_readme_tunnels_the_jobs_api_to_the_address_the_dashboard_listens_on():
    readme = (REPO / "README.md").read_text()
    sequence = readme[readme.index("## Cluster"):readme.index("## Architecture")]
    start = commands("head_start_ray_commands")
    # The dashboard (the job server) binds the head's private address, which `ray dashboard`
    # (a forward to the head's localhost) cannot reach: the ssh tunnel forwards to that address.
    assert "--dashboard-host=$(hostname -I | awk '{print $1}')" in start
    assert "PRIVATE=$(ray exec cluster.yaml \"hostname -I | awk '{print \\$1}'\"" in sequence
    assert "-L 8265:$PRIVATE:8265" in sequence and "\nray dashboard" not in sequence
    assert "RAY_ADDRESS=http://127.0.0.1:8265 ray job submit" in sequence
    # Step 2 writes the AMI it looked up into cluster.yaml, as step 1 does the account.
    assert "ImageId: &ami ami-SET-ME" in TEXT and 'sed -i "s/ami-SET-ME/$AMI/" cluster.yaml' in sequence
