"""The cluster files in clusters/ are valid and safe by default.

- `ray up` files (aws-gpu.yaml, gcp-gpu.yaml) are validated against the JSON
  schema that ships inside the installed Ray package
  (``ray/autoscaler/ray-schema.json``), both as written and after Ray's own
  ``prepare_config`` has merged in the provider defaults: the merged config is
  what `ray up` runs, so a start command left out of our file would come back
  as Ray's default (which binds the dashboard to 0.0.0.0) and fail here.
- The KubeRay RayJob is checked field by field. No KubeRay CRD ships with Ray,
  so the required fields and allowed keys below are encoded by hand from
  KubeRay's ``ray.io/v1`` API types (``rayjob_types.go``,
  ``raycluster_types.go``) and docs: ``spec.entrypoint``,
  ``spec.rayClusterSpec.headGroupSpec`` (``rayStartParams``, ``template``),
  ``workerGroupSpecs[]`` (``groupName``, ``minReplicas``, ``maxReplicas``,
  ``rayStartParams``, ``template``), ``enableInTreeAutoscaling``,
  ``authOptions.mode`` (KubeRay >= 1.5.1).
- Security: a file fails if it exposes the dashboard or job API on a public
  address (``--dashboard-host=0.0.0.0``, ``0.0.0.0/0`` ingress on a port other
  than 22, a LoadBalancer/NodePort Service or an Ingress) or runs without
  token authentication (no ``RAY_AUTH_MODE=token`` before ``ray start``, or
  auth mode ``disabled``). The checker is run on broken copies of the real
  files as well, so a check that can never fail is caught too.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import pytest
import yaml

import ray.autoscaler
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTERS = Path(__file__).resolve().parents[1] / "clusters"
RAY_UP_FILES = ("aws-gpu.yaml", "gcp-gpu.yaml")
RAYJOB_FILE = "kuberay-rayjob.yaml"
RAY_SCHEMA = Path(ray.autoscaler.__file__).parent / "ray-schema.json"

LOOPBACK = ("127.0.0.1", "localhost")
PUBLIC_CIDRS = ("0.0.0.0/0", "::/0")
DASHBOARD_HOST = re.compile(r"dashboard[-_]host\s*[=\s:]\s*[\"']?([^\s\"';]+)")


def load(name: str) -> Any:
    return yaml.safe_load((CLUSTERS / name).read_text())


def strings(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every string in a parsed YAML tree (keys and values), with where it is."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield f"{path}.{key}", str(key)
            yield from strings(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from strings(value, f"{path}[{i}]")
    elif isinstance(node, str):
        yield path, node


def public_dashboard_hosts(tree: Any) -> list[str]:
    problems = []
    for where, text in strings(tree):
        for host in DASHBOARD_HOST.findall(text):
            if host not in LOOPBACK:
                problems.append(f"{where}: dashboard bound to {host} (use 127.0.0.1 and a tunnel)")
    return problems


# --------------------------------------------------------------------------- `ray up` files


def ray_up_problems(config: dict) -> list[str]:
    """Security problems of a `ray up` config; empty when it is safe."""
    problems: list[str] = []
    prepared = prepare_config(copy.deepcopy(config))  # what `ray up` would run

    head_start = prepared.get("head_start_ray_commands", [])
    worker_start = prepared.get("worker_start_ray_commands", [])
    problems += public_dashboard_hosts(prepared)
    if not any("--head" in cmd and re.search(r"dashboard-host[=\s]+(127\.0\.0\.1|localhost)\b", cmd)
               for cmd in head_start):
        problems.append("head_start_ray_commands: `ray start --head` needs --dashboard-host=127.0.0.1")

    for key, commands in (("head_start_ray_commands", head_start), ("worker_start_ray_commands", worker_start)):
        starts = [cmd for cmd in commands if re.search(r"\bray start\b", cmd)]
        if not starts:
            problems.append(f"{key}: no `ray start`")
        for cmd in starts:
            before = cmd[: re.search(r"\bray start\b", cmd).start()]
            if not re.search(r"RAY_AUTH_MODE=[\"']?token\b", before):
                problems.append(f"{key}: `ray start` without RAY_AUTH_MODE=token before it: {cmd!r}")
    for where, text in strings(prepared):
        if re.search(r"RAY_AUTH_MODE\s*[=:]\s*[\"']?disabled", text):
            problems.append(f"{where}: token authentication disabled")

    start_text = " ".join(head_start + worker_start)
    token_mounted = any(remote.rstrip("/").endswith(".ray/auth_token") for remote in prepared.get("file_mounts", {}))
    if not (token_mounted or "RAY_AUTH_TOKEN" in start_text):
        problems.append("file_mounts: the auth token never reaches the nodes (mount ~/.ray/auth_token)")

    rules = prepared["provider"].get("security_group", {}).get("IpPermissions", [])
    for rule in rules:
        cidrs = [r.get("CidrIp") for r in rule.get("IpRanges", [])] + [
            r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", [])
        ]
        ssh_only = rule.get("FromPort") == 22 and rule.get("ToPort") == 22
        if any(c in PUBLIC_CIDRS for c in cidrs) and not ssh_only:
            problems.append(f"provider.security_group: ports {rule.get('FromPort')}-{rule.get('ToPort')} open to the internet")
    outside_rules = {k: v for k, v in prepared.items() if k != "provider"}
    outside_rules["provider"] = {k: v for k, v in prepared["provider"].items() if k != "security_group"}
    for where, text in strings(outside_rules):
        if any(c in text for c in PUBLIC_CIDRS):
            problems.append(f"{where}: {text!r} opens something to the internet")
    return problems


@pytest.mark.parametrize("name", RAY_UP_FILES)
def test_ray_up_file_matches_rays_own_schema(name: str) -> None:
    schema = json.loads(RAY_SCHEMA.read_text())
    config = load(name)
    jsonschema.validate(config, schema)  # as written: typos in our keys fail here
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)  # after Ray merges the provider defaults, as `ray up` does


@pytest.mark.parametrize("name", RAY_UP_FILES)
def test_ray_up_file_has_a_cpu_head_and_gpu_workers_that_scale_from_zero(name: str) -> None:
    config = load(name)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "the head is a CPU node"
    assert head["resources"].get("CPU") == 0, "the head advertises no CPUs, so no trial runs on it"

    gpu_types = {k: v for k, v in types.items() if k != config["head_node_type"]}
    assert gpu_types and all(t["resources"].get("GPU", 0) >= 1 for t in gpu_types.values())
    for key, node_type in gpu_types.items():
        assert node_type.get("min_workers", 0) == 0, f"{key}: GPU nodes must scale to zero when idle"
    gpus_per_node = {t["resources"]["GPU"] for t in gpu_types.values() if t.get("max_workers", 0) > 0}
    assert {1, 8} <= gpus_per_node, "a single-GPU and an 8-GPU type, both enabled"
    assert config["idle_timeout_minutes"] <= 10
    assert sum(t.get("max_workers", 0) for t in gpu_types.values()) <= config["max_workers"], "the global cap holds"

    spot = [
        k for k, t in gpu_types.items()
        if t["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot"
        or t["node_config"].get("scheduling", {}).get("provisioningModel") == "SPOT"
    ]
    assert spot, "a spot / preemptible GPU type is offered"


@pytest.mark.parametrize("name", RAY_UP_FILES)
def test_ray_up_file_installs_raysl_from_the_synced_checkout(name: str) -> None:
    config = load(name)
    remote_repo = [remote for remote, local in config["file_mounts"].items() if local in (".", "./")]
    assert len(remote_repo) == 1, "the repository is synced to the nodes with file_mounts"
    assert any(re.search(rf"pip install .*-e {re.escape(remote_repo[0])}\b", cmd) for cmd in config["setup_commands"])
    assert ".venv" in config["rsync_exclude"], "the local virtual environment stays home"
    image = config["docker"]["image"]
    assert image.startswith(f"rayproject/ray:{ray.__version__}-"), f"cluster Ray must match ours ({ray.__version__})"


@pytest.mark.parametrize("name", RAY_UP_FILES)
def test_ray_up_file_is_safe_by_default(name: str) -> None:
    assert ray_up_problems(load(name)) == []


def _aws() -> dict:
    return load("aws-gpu.yaml")


def _replace_in_commands(config: dict, key: str, old: str, new: str) -> dict:
    config[key] = [cmd.replace(old, new) for cmd in config[key]]
    return config


@pytest.mark.parametrize(
    "break_it, expected",
    [
        (lambda c: _replace_in_commands(c, "head_start_ray_commands", "--dashboard-host=127.0.0.1", "--dashboard-host=0.0.0.0"),
         "dashboard bound to 0.0.0.0"),
        # Left out, Ray's default head command comes back, and it binds 0.0.0.0.
        (lambda c: c.pop("head_start_ray_commands") and c, "dashboard bound to 0.0.0.0"),
        (lambda c: _replace_in_commands(c, "worker_start_ray_commands", "export RAY_AUTH_MODE=token;", ""),
         "without RAY_AUTH_MODE=token"),
        (lambda c: _replace_in_commands(c, "head_start_ray_commands", "RAY_AUTH_MODE=token", "RAY_AUTH_MODE=disabled"),
         "token authentication disabled"),
        (lambda c: c["file_mounts"].pop("~/.ray/auth_token") and c, "auth token never reaches the nodes"),
        (lambda c: c["provider"].update(security_group={"IpPermissions": [
            {"FromPort": 8265, "ToPort": 8265, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]}) or c,
         "ports 8265-8265 open to the internet"),
    ],
    ids=["dashboard-0.0.0.0", "default-head-command", "worker-no-auth", "auth-disabled", "no-token-file", "open-8265"],
)
def test_ray_up_checker_catches_unsafe_configs(break_it, expected: str) -> None:
    problems = ray_up_problems(break_it(_aws()))
    assert any(expected in p for p in problems), problems


def test_ray_up_checker_allows_ssh_from_anywhere() -> None:
    config = _aws()
    config["provider"]["security_group"] = {"IpPermissions": [
        {"FromPort": 22, "ToPort": 22, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]}
    assert ray_up_problems(config) == []


# --------------------------------------------------------------------------- KubeRay RayJob

# Keys KubeRay's ray.io/v1 types define (json tags), so a misspelt key fails
# here instead of being dropped silently by the API server.
RAYJOB_SPEC_KEYS = {
    "activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate", "metadata",
    "clusterSelector", "submitterConfig", "managedBy", "deletionStrategy", "entrypoint", "runtimeEnvYAML",
    "jobId", "submissionMode", "entrypointResources", "entrypointNumCpus", "entrypointNumGpus",
    "ttlSecondsAfterFinished", "shutdownAfterJobFinishes", "suspend", "schedule",
}
RAYCLUSTER_SPEC_KEYS = {
    "headGroupSpec", "workerGroupSpecs", "rayVersion", "enableInTreeAutoscaling", "autoscalerOptions",
    "headServiceAnnotations", "suspend", "authOptions", "gcsFaultToleranceOptions", "managedBy",
    "upgradeStrategy",
}
HEAD_GROUP_KEYS = {"serviceType", "headService", "enableIngress", "rayStartParams", "template", "resources", "labels"}
WORKER_GROUP_KEYS = {
    "groupName", "replicas", "minReplicas", "maxReplicas", "numOfHosts", "rayStartParams", "template",
    "scaleStrategy", "idleTimeoutSeconds", "suspend", "resources", "labels",
}
AUTOSCALER_OPTION_KEYS = {
    "resources", "image", "imagePullPolicy", "env", "envFrom", "volumeMounts", "securityContext",
    "idleTimeoutSeconds", "upscalingMode", "version",
}


def rayjob_field_problems(job: dict) -> list[str]:
    problems: list[str] = []

    def need(cond: bool, msg: str) -> None:
        if not cond:
            problems.append(msg)

    need(job.get("apiVersion") == "ray.io/v1", "apiVersion must be ray.io/v1")
    need(job.get("kind") == "RayJob", "kind must be RayJob")
    need(isinstance(job.get("metadata", {}).get("name"), str), "metadata.name is required")
    spec = job.get("spec") or {}
    need(not set(spec) - RAYJOB_SPEC_KEYS, f"spec: unknown keys {sorted(set(spec) - RAYJOB_SPEC_KEYS)}")
    need(isinstance(spec.get("entrypoint"), str) and spec["entrypoint"].strip() != "", "spec.entrypoint is required")
    if "runtimeEnvYAML" in spec:
        need(isinstance(yaml.safe_load(spec["runtimeEnvYAML"]), dict), "spec.runtimeEnvYAML must be a YAML mapping")
    cluster = spec.get("rayClusterSpec") or {}
    need(bool(cluster), "spec.rayClusterSpec is required (this job brings its own cluster)")
    need(not set(cluster) - RAYCLUSTER_SPEC_KEYS, f"rayClusterSpec: unknown keys {sorted(set(cluster) - RAYCLUSTER_SPEC_KEYS)}")
    options = cluster.get("autoscalerOptions", {})
    need(not set(options) - AUTOSCALER_OPTION_KEYS, f"autoscalerOptions: unknown keys {sorted(set(options) - AUTOSCALER_OPTION_KEYS)}")

    head = cluster.get("headGroupSpec") or {}
    need(not set(head) - HEAD_GROUP_KEYS, f"headGroupSpec: unknown keys {sorted(set(head) - HEAD_GROUP_KEYS)}")
    need(isinstance(head.get("rayStartParams"), dict), "headGroupSpec.rayStartParams is required (may be {})")
    problems += _pod_template_problems(head.get("template"), "headGroupSpec.template")

    groups = cluster.get("workerGroupSpecs")
    need(isinstance(groups, list) and len(groups) > 0, "rayClusterSpec.workerGroupSpecs needs at least one group")
    for i, group in enumerate(groups or []):
        where = f"workerGroupSpecs[{i}]"
        need(not set(group) - WORKER_GROUP_KEYS, f"{where}: unknown keys {sorted(set(group) - WORKER_GROUP_KEYS)}")
        need(isinstance(group.get("groupName"), str) and group["groupName"] != "", f"{where}.groupName is required")
        lo, hi = group.get("minReplicas"), group.get("maxReplicas")
        need(isinstance(lo, int) and lo >= 0, f"{where}.minReplicas must be an integer >= 0")
        need(isinstance(hi, int) and isinstance(lo, int) and hi >= lo, f"{where}.maxReplicas must be >= minReplicas")
        if isinstance(lo, int) and isinstance(hi, int) and "replicas" in group:
            need(lo <= group["replicas"] <= hi, f"{where}.replicas must lie in [minReplicas, maxReplicas]")
        need(isinstance(group.get("rayStartParams"), dict), f"{where}.rayStartParams is required (may be {{}})")
        problems += _pod_template_problems(group.get("template"), f"{where}.template")
    return problems


def _pod_template_problems(template: Any, where: str) -> list[str]:
    containers = ((template or {}).get("spec") or {}).get("containers")
    if not isinstance(containers, list) or not containers:
        return [f"{where}.spec.containers is required"]
    problems = []
    for c in containers:
        if not (isinstance(c.get("name"), str) and isinstance(c.get("image"), str)):
            problems.append(f"{where}: every container needs a name and an image")
        limits = (c.get("resources") or {}).get("limits") or {}
        requests = (c.get("resources") or {}).get("requests") or {}
        if "nvidia.com/gpu" in requests and requests["nvidia.com/gpu"] != limits.get("nvidia.com/gpu"):
            problems.append(f"{where}: nvidia.com/gpu requests must equal limits (Kubernetes rule for extended resources)")
    return problems


def _containers(cluster: dict) -> Iterator[tuple[str, dict]]:
    head = cluster.get("headGroupSpec", {})
    for c in head.get("template", {}).get("spec", {}).get("containers", []):
        yield "head", c
    for group in cluster.get("workerGroupSpecs", []):
        for c in group.get("template", {}).get("spec", {}).get("containers", []):
            yield group.get("groupName", "?"), c


def k8s_security_problems(docs: list[dict]) -> list[str]:
    """Security problems of a KubeRay manifest (all its YAML documents)."""
    problems = public_dashboard_hosts(docs)
    for doc in docs:
        kind = doc.get("kind")
        if kind in ("Ingress", "Route", "Gateway", "HTTPRoute"):
            problems.append(f"{kind} {doc.get('metadata', {}).get('name')}: exposes the cluster outside Kubernetes")
        if kind == "Service" and doc.get("spec", {}).get("type") in ("LoadBalancer", "NodePort"):
            problems.append(f"Service {doc.get('metadata', {}).get('name')}: type {doc['spec']['type']}")
        if kind not in ("RayJob", "RayCluster", "RayService"):
            continue
        spec = doc.get("spec", {})
        cluster = spec.get("rayClusterSpec", spec) if kind == "RayJob" else spec
        head = cluster.get("headGroupSpec", {})
        for group in [head, *cluster.get("workerGroupSpecs", [])]:
            host = (group.get("rayStartParams") or {}).get("dashboard-host")
            if host is not None and host not in LOOPBACK:
                problems.append(f"rayStartParams: dashboard-host {host} set explicitly; leave it to KubeRay "
                                "and keep the head Service ClusterIP")
        if head.get("serviceType", "ClusterIP") != "ClusterIP":
            problems.append(f"headGroupSpec.serviceType: {head['serviceType']} (use ClusterIP + kubectl port-forward)")
        if (head.get("headService") or {}).get("spec", {}).get("type", "ClusterIP") != "ClusterIP":
            problems.append("headGroupSpec.headService: not ClusterIP")
        if head.get("enableIngress"):
            problems.append("headGroupSpec.enableIngress: true exposes the dashboard")

        for where, text in strings(doc):
            if re.search(r"RAY_AUTH_MODE\s*[=:]\s*[\"']?disabled", text):
                problems.append(f"{where}: token authentication disabled")
        env_modes = []
        for group, c in _containers(cluster):
            env = {e.get("name"): e for e in c.get("env", [])}
            mode = env.get("RAY_AUTH_MODE", {}).get("value")
            if mode is not None and mode != "token":
                problems.append(f"{group}/{c.get('name')}: RAY_AUTH_MODE={mode}")
            token = env.get("RAY_AUTH_TOKEN")
            if token is not None and "value" in token:
                problems.append(f"{group}/{c.get('name')}: RAY_AUTH_TOKEN written in the manifest; use a Secret")
            env_modes.append(mode == "token" and token is not None and "secretKeyRef" in token.get("valueFrom", {}))
        auth_mode = (cluster.get("authOptions") or {}).get("mode")
        if auth_mode is not None and auth_mode != "token":
            problems.append(f"authOptions.mode: {auth_mode}")
        if auth_mode != "token" and not (env_modes and all(env_modes)):
            problems.append("token authentication is off: set authOptions.mode: token (KubeRay >= 1.5.1), or "
                            "RAY_AUTH_MODE=token and RAY_AUTH_TOKEN from a Secret on every Ray container")
    return problems


def _rayjob_docs() -> list[dict]:
    return [d for d in yaml.safe_load_all((CLUSTERS / RAYJOB_FILE).read_text()) if d]


def _the_rayjob() -> dict:
    jobs = [d for d in _rayjob_docs() if d.get("kind") == "RayJob"]
    assert len(jobs) == 1
    return jobs[0]


def test_rayjob_has_the_fields_kuberay_requires() -> None:
    assert rayjob_field_problems(_the_rayjob()) == []


def test_rayjob_runs_a_raysl_search_on_gpu_workers_that_scale_from_zero() -> None:
    spec = _the_rayjob()["spec"]
    assert re.search(r"\braysl tune search_spaces/quickstart\.yaml\b", spec["entrypoint"])
    assert re.search(r"--storage (s3|gs)://\S+", spec["entrypoint"]), "results go to object storage"
    assert spec["shutdownAfterJobFinishes"] is True
    cluster = spec["rayClusterSpec"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["rayVersion"] == ray.__version__
    gpu_groups = [
        g for g in cluster["workerGroupSpecs"]
        if any(int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0)) >= 1
               for c in g["template"]["spec"]["containers"])
    ]
    assert gpu_groups, "a worker group with nvidia.com/gpu limits"
    for group in gpu_groups:
        assert group["minReplicas"] == 0 and group["maxReplicas"] >= 1
        assert group.get("replicas", 0) == 0
    head_cpus = cluster["headGroupSpec"]["rayStartParams"].get("num-cpus")
    assert head_cpus == "0", "no trial on the head"


def test_rayjob_is_safe_by_default() -> None:
    assert k8s_security_problems(_rayjob_docs()) == []


def _broken_rayjob(change) -> list[dict]:
    docs = copy.deepcopy(_rayjob_docs())
    change(next(d for d in docs if d["kind"] == "RayJob")["spec"]["rayClusterSpec"], docs)
    return docs


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda c, d: c["headGroupSpec"].update(serviceType="LoadBalancer"), "serviceType: LoadBalancer"),
        (lambda c, d: c["headGroupSpec"].update(serviceType="NodePort"), "serviceType: NodePort"),
        (lambda c, d: c["headGroupSpec"].update(enableIngress=True), "enableIngress"),
        (lambda c, d: c["headGroupSpec"]["rayStartParams"].update({"dashboard-host": "0.0.0.0"}), "dashboard-host 0.0.0.0"),
        (lambda c, d: c.pop("authOptions"), "token authentication is off"),
        (lambda c, d: c.update(authOptions={"mode": "disabled"}), "authOptions.mode: disabled"),
        (lambda c, d: c["headGroupSpec"]["template"]["spec"]["containers"][0].update(
            env=[{"name": "RAY_AUTH_MODE", "value": "disabled"}]), "RAY_AUTH_MODE=disabled"),
        (lambda c, d: d.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "dash"},
                                "spec": {"type": "LoadBalancer", "ports": [{"port": 8265}]}}), "type LoadBalancer"),
        (lambda c, d: d.append({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "dash"}}),
         "Ingress dash"),
    ],
    ids=["loadbalancer", "nodeport", "ingress-flag", "dashboard-0.0.0.0", "no-auth", "auth-disabled",
         "env-auth-disabled", "extra-service", "extra-ingress"],
)
def test_k8s_checker_catches_unsafe_manifests(change, expected: str) -> None:
    problems = k8s_security_problems(_broken_rayjob(change))
    assert any(expected in p for p in problems), problems


def test_k8s_checker_accepts_manual_token_from_a_secret_and_refuses_a_literal_token() -> None:
    def manual(secret: bool):
        def change(cluster, docs):
            cluster.pop("authOptions")
            token = ({"valueFrom": {"secretKeyRef": {"name": "raysl-ray-token", "key": "auth_token"}}}
                     if secret else {"value": "hunter2"})
            for _, c in _containers(cluster):
                c["env"] = [{"name": "RAY_AUTH_MODE", "value": "token"}, {"name": "RAY_AUTH_TOKEN", **token}]
        return change

    assert k8s_security_problems(_broken_rayjob(manual(secret=True))) == []
    assert any("use a Secret" in p for p in k8s_security_problems(_broken_rayjob(manual(secret=False))))


def test_rayjob_field_check_catches_missing_and_misspelt_fields() -> None:
    job = copy.deepcopy(_the_rayjob())
    job["spec"]["shutdownAfterJobFinish"] = True  # misspelt
    del job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["groupName"]
    job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["maxReplicas"] = -1
    problems = rayjob_field_problems(job)
    assert any("unknown keys ['shutdownAfterJobFinish']" in p for p in problems)
    assert any("groupName is required" in p for p in problems)
    assert any("maxReplicas must be >= minReplicas" in p for p in problems)


# --------------------------------------------------------------------------- every file is covered


def test_every_cluster_file_is_checked_and_documented() -> None:
    files = sorted(p.name for p in CLUSTERS.glob("*.y*ml"))
    assert files == sorted((*RAY_UP_FILES, RAYJOB_FILE)), "a new cluster file needs its checks here"
    readme = (CLUSTERS / "README.md").read_text()
    for name in files:
        assert name in readme, f"clusters/README.md does not mention {name}"
