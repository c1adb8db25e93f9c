"""infra/: the deployment files parse, hold what Ray / KubeRay require, and agree with the package.

The cluster launcher YAML goes through Ray's own preparation and validation (what `ray up` does
before it calls AWS). KubeRay's CRDs are not available offline, so the fields KubeRay requires
are checked by name. Every job command in the manifests is parsed by that job's own command line,
exactly as `reid submit` checks a job before submitting it.
"""

from __future__ import annotations

import copy
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import ray
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from jobs.submit import locations, parse_job_args
from reid import __version__

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
KUBERAY = INFRA / "kuberay"
IMAGE = f"ghcr.io/wildlife-reid/wildlife-reid:{__version__}"
RAYJOBS = ["train", "embed", "index"]
CURRENT_GPU_FAMILIES = ("g6", "g6e", "p5", "p5e", "p5en", "p6")  # L4, L40S, H100, H200, B200


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _one(path: Path) -> dict:
    (doc,) = _docs(path)
    return doc


def _dockerfile() -> str:
    return (INFRA / "Dockerfile").read_text()


def _dockerfile_arg(name: str) -> str:
    return re.search(rf"^ARG {name}=(\S+)$", _dockerfile(), re.M).group(1)


def _containers(pod_template: dict) -> list[dict]:
    return pod_template["spec"]["containers"]


def _check_pod(template: dict, role: str) -> dict:
    """A Ray pod template: the Ray container first, our image, the S3 identity, resources set."""
    spec = template["spec"]
    assert spec["serviceAccountName"] == "wildlife-reid"
    ray_container = _containers(template)[0]
    assert ray_container["name"] == f"ray-{role}"
    assert ray_container["image"] == IMAGE
    res = ray_container["resources"]
    assert res["requests"] == res["limits"], "Ray pods should request what they use"
    assert {"cpu", "memory"} <= set(res["limits"])
    env = {e["name"]: e.get("value") for e in ray_container.get("env", [])}
    assert "AWS_REGION" in env
    assert not any(re.search("SECRET|TOKEN|PASSWORD|ACCESS_KEY", k) for k in env), "no secrets in pods"
    if "nvidia.com/gpu" in res["limits"]:
        assert any(t["key"] == "nvidia.com/gpu" for t in spec.get("tolerations", []))
    return ray_container


def _check_ray_cluster_spec(spec: dict) -> None:
    """The RayCluster fields KubeRay requires (also the rayClusterSpec of a RayJob)."""
    assert spec["rayVersion"] == ray.__version__ == _dockerfile_arg("RAY_VERSION")
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    assert all(isinstance(v, str) for v in head["rayStartParams"].values()), "rayStartParams are strings"
    assert head.get("serviceType", "ClusterIP") == "ClusterIP", "the dashboard must not be exposed"
    ports = {p["containerPort"] for p in _check_pod(head["template"], "head")["ports"]}
    assert {6379, 8265} <= ports
    assert spec["workerGroupSpecs"]
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"] and isinstance(group["rayStartParams"], dict)
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        _check_pod(group["template"], "worker")


# --------------------------------------------------------------------------------------------
# Ray cluster launcher (AWS)


def test_aws_cluster_yaml_passes_rays_own_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((INFRA / "aws-cluster.yaml").read_text())
    prepared = prepare_config(copy.deepcopy(raw))  # defaults merged as `ray up` does
    validate_config(prepared)  # Ray's JSON schema and node-type checks
    assert raw["provider"]["type"] == "aws"
    assert raw["docker"]["image"] == IMAGE
    assert f"--env AWS_REGION={raw['provider']['region']}" in raw["docker"]["run_options"]


def test_aws_cluster_node_types_gpu_spot_roles_and_private_dashboard():
    raw = yaml.safe_load((INFRA / "aws-cluster.yaml").read_text())
    types = raw["available_node_types"]
    head = types[raw["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and not head["node_config"]["InstanceType"].startswith("g")
    gpu = {name: t for name, t in types.items() if t["resources"].get("GPU", 0) > 0}
    assert gpu, "a GPU worker group"
    for t in gpu.values():
        family = t["node_config"]["InstanceType"].split(".")[0]
        assert family in CURRENT_GPU_FAMILIES, family
    assert any(
        t["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot" for t in gpu.values()
    )
    for name, t in types.items():  # S3 through instance roles on every node, no keys
        assert t["node_config"]["IamInstanceProfile"]["Arn"].startswith("arn:aws:iam::"), name
    head_start = " ".join(raw["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    text = (INFRA / "aws-cluster.yaml").read_text()
    assert "0.0.0.0" not in text and "8265" not in str(raw["provider"].get("security_group", ""))
    assert not re.search(r"AWS_(SECRET|ACCESS_KEY|SESSION)", text)


# --------------------------------------------------------------------------------------------
# KubeRay


def test_raycluster_has_the_fields_kuberay_requires():
    doc = _one(KUBERAY / "raycluster.yaml")
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayCluster"
    assert doc["metadata"]["name"]
    _check_ray_cluster_spec(doc["spec"])
    groups = {g["groupName"]: g for g in doc["spec"]["workerGroupSpecs"]}
    gpu_limits = [
        _containers(g["template"])[0]["resources"]["limits"].get("nvidia.com/gpu") for g in groups.values()
    ]
    assert any(gpu_limits), "a GPU worker group"
    assert doc["spec"]["enableInTreeAutoscaling"] is True


def test_service_account_gives_s3_through_an_iam_role():
    doc = _one(KUBERAY / "serviceaccount.yaml")
    assert doc["kind"] == "ServiceAccount" and doc["metadata"]["name"] == "wildlife-reid"
    assert doc["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")


@pytest.mark.parametrize("job", RAYJOBS)
def test_rayjob_manifest_is_complete_and_its_command_is_a_valid_job(job):
    doc = _one(KUBERAY / f"rayjob-{job}.yaml")
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayJob"
    spec = doc["spec"]
    assert spec["submissionMode"] in ("K8sJobMode", "HTTPMode", "SidecarMode")
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    assert spec["backoffLimit"] >= 1, "Ray Jobs never retry: let KubeRay re-run the (resumable) job"
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert "working_dir" not in runtime_env, "the image holds the code"
    _check_ray_cluster_spec(spec["rayClusterSpec"])

    argv = shlex.split(spec["entrypoint"])
    assert argv[:4] == ["python", "-m", "jobs.cli", job]
    module, config = parse_job_args(job, argv[4:])  # the job's own option parsing and validation
    assert not getattr(config, "address", None), "a submitted job joins its cluster by RAY_ADDRESS"
    inputs, outputs = locations(module, config)
    assert outputs and all(uri.startswith("s3://") for _, uri in inputs + outputs), "nodes share no disk"


def test_rayjobs_form_one_chain_train_embed_index():
    configs = {}
    for job in RAYJOBS:
        argv = shlex.split(_one(KUBERAY / f"rayjob-{job}.yaml")["spec"]["entrypoint"])
        configs[job] = parse_job_args(job, argv[4:])[1]
    assert configs["embed"].model == configs["train"].out
    assert configs["index"].embeddings == [configs["embed"].out]
    assert configs["embed"].archive == configs["train"].archive
    # the GPU group each job asks for exists in the long-lived RayCluster too
    cluster_groups = {g["groupName"] for g in _one(KUBERAY / "raycluster.yaml")["spec"]["workerGroupSpecs"]}
    for job in RAYJOBS:
        groups = _one(KUBERAY / f"rayjob-{job}.yaml")["spec"]["rayClusterSpec"]["workerGroupSpecs"]
        assert {g["groupName"] for g in groups} <= cluster_groups


# --------------------------------------------------------------------------------------------
# Runtime image and local cluster


def test_dockerfile_builds_the_package_with_cuda_torch_and_faiss_gpu():
    text = _dockerfile()
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert froms and all(f in ("${CUDA_IMAGE}",) for f in froms)
    assert _dockerfile_arg("CUDA_IMAGE").startswith("nvidia/cuda:")
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert any(d.startswith("faiss-gpu") for d in pyproject["project"]["optional-dependencies"]["gpu"])
    assert re.search(r'pip install "\$\(ls /tmp/wildlife_reid-\*\.whl\)\[gpu\]"', text)
    assert pyproject["project"]["name"].replace("-", "_") == "wildlife_reid"
    makefile = (REPO / "Makefile").read_text()  # torch pins agree with the Makefile's
    for pin in re.findall(r"(torch(?:vision)?==\S+)", makefile):
        assert pin in text, pin
    for src in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):  # every copied path exists
        for item in src.split():
            assert "*" in item or (REPO / item).exists(), item
    assert set(pyproject["tool"]["setuptools"]["packages"]["find"]["include"]) == {
        "reid*",
        "jobs*",
        "cluster*",
    }
    for package in ("reid", "jobs", "cluster"):
        assert f"COPY {package} ./{package}" in text
    assert '"-m", "jobs.cli"' in text and pyproject["project"]["scripts"]["reid"] == "jobs.cli:main"
    ignore = (INFRA / "Dockerfile.dockerignore").read_text().split()
    assert ignore[ignore.index("*") :][:1] == ["*"] and "!reid" in ignore  # .venv/.git never sent


def test_one_image_everywhere_tagged_with_the_package_version():
    images = set(re.findall(r"ghcr\.io/[\w./-]+:[\w.-]+", _dockerfile()))
    for path in [INFRA / "aws-cluster.yaml", *KUBERAY.glob("*.yaml")]:
        images |= set(re.findall(r"ghcr\.io/[\w./-]+:[\w.-]+", path.read_text()))
    assert images == {IMAGE}


def test_local_cluster_script_is_valid_bash_and_documents_its_commands():
    script = INFRA / "local-cluster.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    usage = subprocess.run(
        ["bash", str(script)], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}
    )
    assert usage.returncode == 2
    for command in ("up", "down", "status", "env", "add-worker", "kill-worker"):
        assert command in usage.stdout
