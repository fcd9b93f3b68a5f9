"""The cluster set-ups, tested on a machine without Docker: docker-compose.yml, deploy/ray/cluster.yaml and
deploy/k8s are parsed and held to what they promise, and the compose stack runs as local processes with the
compose file's own commands and environment, a sweep submitted through its job server."""

from __future__ import annotations

import argparse
import base64
import configparser
import importlib
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from contextlib import ExitStack
from pathlib import Path

import pytest
import yaml

from conftest import free_port, sweep_file, wait_for_http

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "docker-compose.yml"
K8S = REPO / "deploy" / "k8s"
VENV_BIN = Path(sys.executable).parent

# The secrets .env must provide: compose refuses to start without any of them.
SECRETS = {"POSTGRES_PASSWORD", "S3_ACCESS_KEY", "S3_SECRET_KEY", "MLFLOW_ADMIN_PASSWORD", "MLFLOW_FLASK_SECRET_KEY",
           "RAY_AUTH_TOKEN"}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY")
# The services that run deploy/Dockerfile's image; the one-shot ones exit when done.
PROJECT_SERVICES = {"s3-init", "optuna-init", "mlflow", "ray-head", "ray-worker", "optuna-dashboard"}
ONE_SHOT = {"s3-init", "optuna-init"}
DEFAULT_PORTS = {"postgres": {"5432"}, "ray-worker": {"52365"}}
# A Ray head's environment names the stores; the sweep commands take them as the defaults of --storage,
# --tracking-uri and --optuna-storage.
STORE_VARIABLES = ("FPA_STORAGE", "MLFLOW_TRACKING_URI", "FPA_OPTUNA_STORAGE")
HEAD_PREFIX = "docker compose exec ray-head python "


# -- compose's variable substitution, to read the file as compose would --

_VARIABLE = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\})")


def interpolate(value, env: dict[str, str]):
    """${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error} and $$, everywhere in a parsed file.
    Raises ValueError naming every required variable that is missing or empty."""
    missing: list[str] = []

    def substitute(match: re.Match) -> str:
        if match["escaped"]:
            return "$"
        name, op, arg = match["name"], match["op"], match["arg"]
        value = env.get(name)
        empty = value is None or (value == "" and op and op.startswith(":"))
        if op in (":?", "?") and empty:
            missing.append(name)
            return ""
        if op in (":-", "-") and empty:
            return arg
        return value or ""

    def walk(node):
        if isinstance(node, str):
            return _VARIABLE.sub(substitute, node)
        if isinstance(node, list):
            return [walk(n) for n in node]
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        return node

    result = walk(value)
    if missing:
        raise ValueError(f"required variables not set: {sorted(set(missing))}")
    return result


def raw_compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def compose(env: dict[str, str]) -> dict:
    return interpolate(raw_compose(), env)


def env_example() -> dict[str, str]:
    """.env.example's variables, the commented-out defaults included (`# NAME=value`)."""
    out = {}
    for line in (REPO / ".env.example").read_text().splitlines():
        match = re.fullmatch(r"#?\s*([A-Z][A-Z0-9_]*)=(\S*)", line.strip())
        if match:
            out[match[1]] = match[2]
    return out


def filled_env() -> dict[str, str]:
    return {**{k: v for k, v in env_example().items() if k not in SECRETS}, **{k: "x" * 16 for k in SECRETS}}


def flags(command: list[str]) -> dict[str, str | None]:
    """--name=value (or a bare --flag: None) of a command line."""
    return {a.split("=", 1)[0]: (a.split("=", 1)[1] if "=" in a else None) for a in command if a.startswith("-")}


def referenced_variables(text: str) -> set[str]:
    return {m["name"] for m in _VARIABLE.finditer(text) if m["name"]}


def head_commands() -> list[list[str]]:
    """The commands README.md and deploy/README.md run on the compose stack's head (the same in both), each
    as the arguments of `python`."""
    found = {readme: sorted(ln.strip() for ln in (REPO / readme).read_text().splitlines()
                            if ln.strip().startswith(HEAD_PREFIX)) for readme in ("README.md", "deploy/README.md")}
    assert found["README.md"] == found["deploy/README.md"], found
    return [shlex.split(line[len(HEAD_PREFIX):]) for line in found["README.md"]]


def head_command(script: str, *having: str) -> list[str]:
    """The arguments of the one head command that runs `script` with every flag in `having`."""
    (command,) = [c for c in head_commands() if c[0] == script and set(having) <= set(c)]
    return command[1:]


def the_sweep_command() -> list[str]:
    """The one command that runs a sweep on the compose stack: launch.py's arguments."""
    return head_command("sweeps/launch.py", "--dataset")


def launch_args(argv: list[str], env: dict[str, str]) -> argparse.Namespace:
    """launch.py's arguments as a process with the environment `env` (a Ray head's) makes them out, the
    tracking URI included. The storage defaults are read when sweeps.launch is imported, so it is reloaded
    with `env`'s store variables, then again as it was."""
    import sweeps.launch
    from sweeps.tracking import default_tracking_uri

    saved = {name: os.environ.pop(name, None) for name in STORE_VARIABLES}
    try:
        os.environ.update({name: env[name] for name in STORE_VARIABLES if env.get(name)})
        args = importlib.reload(sweeps.launch).build_parser().parse_args(argv)
        args.tracking_uri = args.tracking_uri or default_tracking_uri()
        # A new sweep's Optuna store (a resumed one keeps the store it recorded).
        args.optuna_storage = args.optuna_storage or os.environ.get("FPA_OPTUNA_STORAGE")
        return args
    finally:
        for name, value in saved.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value
        importlib.reload(sweeps.launch)


def service_hosts(service: dict) -> set[str]:
    """The compose services this one talks to, from the addresses in its command and environment."""
    text = json.dumps([service.get("command"), service.get("environment")])
    return set(re.findall(r"(?://|@)(s3|postgres|mlflow|ray-head):\d+", text)) | \
        set(re.findall(r"--address=(ray-head):\d+", text))


# -- docker-compose.yml --

def test_compose_services_wait_for_what_they_use():
    services = raw_compose()["services"]
    assert set(services) == {"postgres", "optuna-init", "s3", "s3-init", "mlflow", "ray-head", "ray-worker",
                             "optuna-dashboard"}

    def needs(name: str) -> set[str]:  # everything a service waits for, transitively
        direct = set(services[name].get("depends_on", {}))
        return direct.union(*(needs(d) for d in direct)) if direct else set()

    for name, service in services.items():
        talks_to = service_hosts(service)
        assert talks_to <= needs(name), f"{name} talks to {talks_to} but waits only for {needs(name)}"
        for dependency, how in service.get("depends_on", {}).items():
            expected = "service_completed_successfully" if dependency in ONE_SHOT else "service_healthy"
            assert how == {"condition": expected}, (name, dependency)
    # The bucket exists before anything writes to it, Optuna's tables before anything reads or writes them.
    assert {"s3-init"} <= needs("mlflow") and {"s3-init"} <= needs("ray-worker")
    assert {"optuna-init"} <= needs("ray-head") and {"optuna-init"} <= needs("optuna-dashboard")


def test_compose_health_checks_restart_policies_and_volumes():
    spec = raw_compose()
    declared = set(spec["volumes"])
    for name, service in spec["services"].items():
        command = " ".join(service.get("command", []))
        if name in ONE_SHOT:
            assert service["restart"] == "no" and "healthcheck" not in service and "ports" not in service
            continue
        assert service["restart"] == "unless-stopped", name
        test = service["healthcheck"]["test"]
        assert test[0] == "CMD" and service["healthcheck"]["retries"] >= 10, name
        # The check asks, over TCP, the port the service itself listens on: one its command sets, or the
        # program's default (PostgreSQL's 5432, pg_isready's too; a Ray node's dashboard agent, 52365).
        check = " ".join(test)
        asked = re.findall(r"127\.0\.0\.1:(\d+)", check) or ["5432" for _ in [1] if "--host=127.0.0.1" in check]
        listens = set(re.findall(r"port=(\d+)", command)) | DEFAULT_PORTS.get(name, set())
        assert len(asked) == 1 and asked[0] in listens, (name, asked, listens)
        named = {m.split(":")[0] for m in service.get("volumes") or [] if not m.startswith(("/", ".", "$"))}
        assert named and named <= declared, f"{name} keeps its state in no named volume"


def test_compose_secrets_come_from_env_and_ports_bind_to_loopback():
    text = COMPOSE.read_text()
    with pytest.raises(ValueError) as refused:
        compose({})
    assert set(re.findall(r"'(\w+)'", str(refused.value))) == SECRETS  # each names itself, nothing else is required
    example = env_example()
    assert referenced_variables(text) <= set(example), referenced_variables(text) - set(example)
    assert all(example[name] == "" for name in SECRETS)  # placeholders, never a usable secret

    # No URL carries a password; every secret-looking variable is a required ${VAR:?...} and nothing else:
    # no literal, no default.
    assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", text)
    for name, service in raw_compose()["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(key) and key != "RAY_AUTH_MODE":
                required = re.fullmatch(r"\$\{[A-Z][A-Z0-9_]*:\?[^}]+\}", value)
                assert required, f"{name}: {key} is not a required variable"

    resolved = compose(filled_env())["services"]
    published = {name: s["ports"] for name, s in resolved.items() if "ports" in s}
    assert set(published) == {"s3", "mlflow", "ray-head", "optuna-dashboard"}  # never PostgreSQL
    for name, ports in published.items():
        assert all(p.startswith("127.0.0.1:") for p in ports), (name, ports)
    assert all(p.startswith("${FPA_BIND_ADDRESS:-127.0.0.1}:")
               for s in raw_compose()["services"].values() for p in s.get("ports", []))

    # .env and the other secret files are ignored by git and kept out of the image.
    for path in (".env", "deploy/ray/cluster.env", "deploy/k8s/secrets.env"):
        assert subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO).returncode == 0, path
        assert path in (REPO / ".dockerignore").read_text().split(), path


def test_compose_images_and_commands():
    services = compose(filled_env())["services"]
    image = services["mlflow"]["image"]
    for name in PROJECT_SERVICES:
        assert services[name]["image"] == image == "fpa-sweeps:0.1.0", name
        assert services[name]["build"] == {"context": ".", "dockerfile": "deploy/Dockerfile"}
    for name in set(services) - PROJECT_SERVICES:  # third-party images are pinned to a release
        assert re.fullmatch(r"[\w./-]+:\d+(\.\d+)+[\w.-]*", services[name]["image"]), services[name]["image"]

    mlflow = services["mlflow"]
    assert mlflow["command"][:2] == ["mlflow", "server"]
    mlflow_flags = flags(mlflow["command"])
    assert mlflow_flags["--app-name"] == "basic-auth" and "--serve-artifacts" in mlflow_flags
    assert mlflow_flags["--artifacts-destination"] == "s3://fpa/mlartifacts"
    assert mlflow_flags["--backend-store-uri"] == "postgresql+psycopg2://fpa@postgres:5432/mlflow"  # no password
    assert {"mlflow:5000", "127.0.0.1:*"} <= set(mlflow_flags["--allowed-hosts"].split(","))
    environment = mlflow["environment"]
    assert {"MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY", "PGPASSWORD", "MLFLOW_S3_ENDPOINT_URL",
            "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(environment)
    auth = configparser.ConfigParser()
    assert auth.read(REPO / Path(environment["MLFLOW_AUTH_CONFIG_PATH"]).relative_to("/app"))
    assert "admin_password" not in auth["mlflow"]  # the admin's password comes from the environment only
    assert auth["mlflow"]["database_uri"] == "sqlite:////var/lib/mlflow/basic_auth.db"
    assert "mlflow-auth:/var/lib/mlflow" in mlflow["volumes"]

    head, worker = services["ray-head"], services["ray-worker"]
    assert head["command"][:4] == ["ray", "start", "--head", "--block"]
    head_flags = flags(head["command"])
    assert head_flags["--dashboard-host"] == "0.0.0.0" and head_flags["--num-gpus"] == "0"
    assert f"127.0.0.1:{head_flags['--dashboard-port']}:{head_flags['--dashboard-port']}" in head["ports"]
    assert worker["command"][0] == "deploy/claim-gpu.sh" and os.access(REPO / "deploy/claim-gpu.sh", os.X_OK)
    assert worker["command"][1:3] == ["ray", "start"] and "--block" in worker["command"]
    assert flags(worker["command"])["--address"] == f"ray-head:{head_flags['--port']}"
    assert flags(worker["command"])["--num-gpus"] == "1"
    (gpus,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert gpus["driver"] == "nvidia" and "gpu" in gpus["capabilities"] and gpus["count"] == "all"
    # The workers' trials get what a trial uses, the head's driver also Optuna's database; both hold the token.
    for env in (head["environment"], worker["environment"]):
        assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN"]
        assert {"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_USERNAME",
                "MLFLOW_TRACKING_PASSWORD"} <= set(env)
    assert "PGPASSWORD" in head["environment"] and "PGPASSWORD" not in worker["environment"]
    assert set(services["optuna-dashboard"]["environment"]) == {"PGPASSWORD"}

    assert services["s3-init"]["command"] == ["python", "deploy/create_bucket.py", "fpa"]
    optuna_storage = services["optuna-dashboard"]["command"][-1]
    assert optuna_storage == "postgresql+psycopg2://fpa@postgres:5432/optuna" == services["optuna-init"]["command"][-1]

    # The README's one command, run on the head: with the head's environment it names this stack's bucket,
    # MLflow and Optuna database, and submits to the head's job server.
    args = launch_args(the_sweep_command(), head["environment"])
    assert args.storage == "s3://fpa/sweeps" and args.optuna_storage == optuna_storage
    assert args.storage.split("/")[2] == services["s3-init"]["command"][-1] == \
        mlflow_flags["--artifacts-destination"].split("/")[2]
    assert args.tracking_uri == f"http://mlflow:{mlflow_flags['--port']}"
    assert args.submit == f"http://127.0.0.1:{head_flags['--dashboard-port']}"
    assert args.gpus_per_trial is None  # the workers are up: a GPU per trial where there are GPUs, else CPUs
    other_bucket = compose({**filled_env(), "S3_BUCKET": "elsewhere"})["services"]["ray-head"]["environment"]
    assert other_bucket["FPA_STORAGE"] == "s3://elsewhere/sweeps"
    # Only the head holds them: trials get their tracking URI and folder from the driver, never open Optuna's.
    assert not set(STORE_VARIABLES) & set(worker["environment"])
    # The other commands after a sweep run on the head too; a resumed sweep is a job again.
    assert {c[0] for c in head_commands()} == {"sweeps/launch.py", "sweeps/promote.py", "sweeps/resume.py"}
    resumed = launch_args(head_command("sweeps/launch.py", "--resume"), head["environment"])
    assert resumed.resume == "NAME" and resumed.submit == args.submit and resumed.storage == args.storage
    continued = head_command("sweeps/resume.py")
    assert continued[continued.index("--address") + 1] == "auto"  # this cluster's workers, not a Ray of its own


def test_the_image_installs_the_pinned_project_on_a_matching_cuda_base():
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    base = re.search(r"ARG CUDA_IMAGE=nvidia/cuda:(\d+)\.(\d+)\.(\d+)-[\w.-]+", dockerfile)
    assert base, "the CUDA base image is pinned to a full version"
    constraints = (REPO / "constraints.txt").read_text().splitlines()
    (runtime,) = [ln for ln in constraints if ln.startswith("nvidia-cuda-runtime")]
    assert base[1] == runtime.split("==")[1].split(".")[0], "torch's CUDA and the base image's differ"
    assert re.search(rf"ARG PYTHON_VERSION={sys.version_info.major}\.{sys.version_info.minor}\n", dockerfile)
    assert "pip install --no-cache-dir -c constraints.txt '.[fid,sweep]'" in dockerfile
    # Installable anywhere: every pin comes from PyPI, none from a local folder or another index.
    pins = [ln for ln in constraints if ln.strip() and not ln.startswith("#")]
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[\w.+!-]+", ln) for ln in pins), \
        [ln for ln in pins if not re.fullmatch(r"[A-Za-z0-9_.-]+==[\w.+!-]+", ln)]


def test_each_worker_claims_a_gpu_of_its_own(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\nprintf '0\\n1\\n'\n")  # a host with two GPUs
    (fake / "nvidia-smi").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "FPA_GPU_CLAIMS": str(tmp_path / "claims")}
    script = str(REPO / "deploy" / "claim-gpu.sh")

    def worker(*command):
        return subprocess.Popen([script, *command], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    first, second = worker("sh", "-c", "echo $CUDA_VISIBLE_DEVICES; exec sleep 30"), None
    try:
        assert first.stdout.readline().strip() == "0"
        second = worker("sh", "-c", "echo $CUDA_VISIBLE_DEVICES; exec sleep 30")
        assert second.stdout.readline().strip() == "1"
        third = subprocess.run([script, "true"], env=env, capture_output=True, text=True, timeout=30)
        assert third.returncode == 1 and "all 2 GPU(s) are held" in third.stderr
        first.kill()
        first.wait()
        again = subprocess.run([script, "sh", "-c", "echo $CUDA_VISIBLE_DEVICES"], env=env, capture_output=True,
                               text=True, timeout=30)
        assert again.stdout.strip() == "0"  # a stopped worker's GPU is free again
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()


def test_docker_compose_accepts_the_file(tmp_path):
    """Where Docker's compose plugin is installed (not on the test machine): its own reading of the file."""
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("no `docker compose` here")
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in filled_env().items()))
    result = subprocess.run([docker, "compose", "--env-file", str(env_file), "-f", str(COMPOSE), "config", "--quiet"],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr


# -- deploy/ray/cluster.yaml --

def test_the_ray_cluster_config_validates_against_rays_schema():
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((REPO / "deploy" / "ray" / "cluster.yaml").read_text())
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    validate_config(prepare_config(config))  # as `ray up` does, after filling in the provider's defaults

    nodes = config["available_node_types"]
    head = nodes[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0, "GPU": 0}
    (workers,) = [n for name, n in nodes.items() if name != config["head_node_type"]]
    assert workers["resources"]["GPU"] == 1
    assert workers["min_workers"] == 0 < workers["max_workers"] <= config["max_workers"]  # GPU workers from zero
    assert workers["node_config"]["InstanceMarketOptions"] == {"MarketType": "spot"}
    assert config["docker"]["image"].rsplit("/", 1)[-1] == compose(filled_env())["services"]["ray-head"]["image"]
    # The image holds everything: Ray's default setup commands (which pip install Ray) are switched off.
    assert all(config[k] == [] for k in ("setup_commands", "head_setup_commands", "worker_setup_commands"))
    head_start, worker_start = config["head_start_ray_commands"][-1], config["worker_start_ray_commands"][-1]
    assert "--head" in head_start and "--autoscaling-config=~/ray_bootstrap_config.yaml" in head_start
    assert "--num-gpus=0" in head_start and "--address=$RAY_HEAD_IP:6379" in worker_start
    # Secrets only from the ignored env file that every node gets and `ray start` reads.
    (remote, local), = config["file_mounts"].items()
    assert local == "deploy/ray/cluster.env" and all(f". {remote}" in c for c in (head_start, worker_start))
    example = (REPO / "deploy" / "ray" / "cluster.env.example").read_text()
    assert re.search(r"^RAY_AUTH_TOKEN=$", example, re.M) and re.search(r"^MLFLOW_TRACKING_PASSWORD=$", example, re.M)
    # ... which also names the stores: placeholders, no password in a URL. The job on the head takes them.
    stores = dict(re.findall(rf"^({'|'.join(STORE_VARIABLES)})=(\S+)$", example, re.M))
    assert set(stores) == set(STORE_VARIABLES)
    assert not any(re.search(r"://[^/\s:@]+:[^/\s@]+@", url) for url in stores.values())
    # deploy/README.md's sweep on this cluster, submitted from a checkout, runs on the head with those stores;
    # each trial asks for a GPU, which makes the autoscaler add GPU workers (none is up when it starts).
    prefix = "python sweeps/launch.py "
    (line,) = [ln.strip() for ln in (REPO / "deploy" / "README.md").read_text().split("## AWS", 1)[1]
               .split("\n## ", 1)[0].splitlines() if ln.strip().startswith(prefix)]
    args = launch_args(shlex.split(line[len(prefix):]), stores)
    assert (args.storage, args.tracking_uri, args.optuna_storage) == tuple(stores[name] for name in STORE_VARIABLES)
    assert args.gpus_per_trial == 1 and args.dataset and args.submit == "http://127.0.0.1:8265"
    text = (REPO / "deploy" / "ray" / "cluster.yaml").read_text()
    assert not re.search(r"(?i)(password|secret|token)\s*[:=]\s*\S", text)


# -- deploy/k8s --

def k8s_documents(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def containers(document: dict) -> list[dict]:
    """Every container of a workload, RayCluster groups included."""
    spec = document.get("spec", {})
    templates = [spec.get("template", {}).get("spec", {})]
    if document["kind"] == "RayCluster":
        templates = [spec["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in
                                                                   spec["workerGroupSpecs"]]
    return [c for t in templates for c in t.get("initContainers", []) + t.get("containers", [])]


def container_env(container: dict, config_maps: dict[str, dict[str, str]]) -> dict[str, str]:
    """A container's environment from its ConfigMaps and literal values (secrets left out)."""
    env = {}
    for source in container.get("envFrom", []):
        env.update(config_maps[source["configMapRef"]["name"]])
    for variable in container.get("env", []):
        ref = variable.get("valueFrom", {}).get("configMapKeyRef")
        if ref:
            env[variable["name"]] = config_maps[ref["name"]][ref["key"]]
        elif "value" in variable:
            env[variable["name"]] = variable["value"]
    return env


def test_the_kuberay_manifests():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    documents = [d for name in kustomization["resources"] for d in k8s_documents(name)]
    by_kind = {}
    for d in documents:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    assert {"RayCluster", "StatefulSet", "Deployment", "Service", "Job", "Namespace"} <= set(by_kind)
    assert set(by_kind["StatefulSet"]) == {"postgres", "seaweedfs"} and set(by_kind["Deployment"]) == {
        "mlflow", "optuna-dashboard"}
    assert "Secret" not in by_kind  # secrets only through the generator, from the ignored secrets.env
    assert kustomization["secretGenerator"] == [{"name": "fpa-secrets", "envs": ["secrets.env"]}]

    (cluster,) = by_kind["RayCluster"].values()
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["spec"]["enableInTreeAutoscaling"] is True
    assert cluster["spec"]["authOptions"] == {"mode": "token"}
    import ray

    assert cluster["spec"]["rayVersion"] == ray.__version__
    assert cluster["spec"]["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"
    (gpu_group,) = cluster["spec"]["workerGroupSpecs"]
    assert gpu_group["minReplicas"] <= gpu_group["replicas"] <= gpu_group["maxReplicas"]
    assert gpu_group["minReplicas"] == 0 < gpu_group["maxReplicas"]  # from zero: the RayJob asks for GPUs
    (worker,) = gpu_group["template"]["spec"]["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1

    # Every secret-looking variable comes from the Secret, under a key secrets.env.example lists.
    keys = set(re.findall(r"^([A-Z][A-Z0-9_]*)=", (K8S / "secrets.env.example").read_text(), re.M))
    assert keys == SECRETS - {"RAY_AUTH_TOKEN"}  # KubeRay makes Ray's token
    env_vars = [e for d in documents for c in containers(d) for e in c.get("env", [])]
    for variable in env_vars:
        if SECRET_NAME.search(variable["name"]):
            ref = variable["valueFrom"]["secretKeyRef"]
            assert ref["name"] == "fpa-secrets" and ref["key"] in keys, variable["name"]
    assert not re.search(r"(?i)(password|secret_key|token)\s*[:=]\s*['\"]?\w", "\n".join(
        (K8S / n).read_text() for n in kustomization["resources"]))

    # The same images as compose: the project's (tagged by kustomize) and the pinned third-party ones.
    services = compose(filled_env())["services"]
    (project_image,) = kustomization["images"]
    assert f"{project_image['name']}:{project_image['newTag']}" == services["mlflow"]["image"]
    third_party = {services[s]["image"] for s in ("postgres", "s3")}
    for d in documents:
        for c in containers(d):
            assert c["image"] == project_image["name"] or c["image"] in third_party, c["image"]
    # ... and the same scripts: PostgreSQL's init SQL, SeaweedFS's start.
    init_sql = by_kind["ConfigMap"]["postgres-initdb"]["data"]["10-optuna.sql"]
    assert init_sql == (REPO / "deploy" / "postgres" / "initdb.sql").read_text()
    (seaweedfs,) = containers(by_kind["StatefulSet"]["seaweedfs"])
    assert seaweedfs["args"][0] == raw_compose()["services"]["s3"]["command"][0].replace("$$", "$")
    tables, _ = containers(by_kind["Deployment"]["optuna-dashboard"])
    assert tables["command"][:3] == services["optuna-init"]["command"][:3]

    # The addresses the workloads use are Services of this kustomization, on their ports.
    endpoints = dict(item.split("=", 1) for item in kustomization["configMapGenerator"][0]["literals"])
    ports = {name: {p["port"] for p in s["spec"]["ports"]} for name, s in by_kind["Service"].items()}
    for host, port in re.findall(r"(?://|@)([a-z0-9-]+):(\d+)", " ".join(endpoints.values())):
        assert int(port) in ports.get(host, set()), (host, port)

    # The RayJob runs launch.py on that cluster's head, whose environment (the endpoints) names the stores:
    # the bucket, the MLflow Service and Optuna's database. Each trial asks for a GPU, so that the autoscaler
    # adds GPU workers from zero. Only the head holds MLflow's variable, under its own name.
    (job,) = k8s_documents("rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    head_container = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    head_env = container_env(head_container, {"fpa-endpoints": endpoints})
    command = shlex.split(job["spec"]["entrypoint"])
    assert command[:2] == ["python", "/app/sweeps/launch.py"]
    args = launch_args(command[2:], head_env)
    assert args.storage == f"s3://{endpoints['FPA_BUCKET']}/sweeps" == endpoints["FPA_STORAGE"]
    assert args.tracking_uri == "http://mlflow:5000" and 5000 in ports["mlflow"]
    assert args.optuna_storage == endpoints["FPA_OPTUNA_STORAGE"]
    assert args.gpus_per_trial == 1 and args.dataset
    assert not any("MLFLOW_TRACKING_URI" in container_env(c, {"fpa-endpoints": endpoints})
                   for d in documents for c in containers(d) if c is not head_container)


# -- the compose stack as local processes --

class Stack:
    """The local processes standing in for compose's services: each one's command and environment are the
    compose file's, with the compose network's addresses swapped for local ones."""

    def __init__(self, tmp_path: Path, addresses: dict[str, str], exits: ExitStack):
        self.tmp_path, self.addresses, self.exits = tmp_path, addresses, exits
        # What a container's image would provide (the venv, the caches), none of the test's own credentials
        # or stores.
        self.base_env = {k: v for k, v in os.environ.items()
                         if not k.startswith(("AWS_", "MLFLOW_", "RAY_", "PG")) and k not in STORE_VARIABLES}
        self.base_env.update(PATH=f"{VENV_BIN}:{os.environ['PATH']}", RAY_USAGE_STATS_ENABLED="0")

    def local(self, value: str) -> str:
        for address, local in self.addresses.items():
            value = value.replace(address, local)
        return value

    def command(self, service: dict, overrides: dict[str, str], extra: tuple[str, ...] = ()) -> list[str]:
        command = service["command"]
        assert set(overrides) <= set(flags(command)), "only flags the compose file sets are replaced"
        args = [f"{a.split('=', 1)[0]}={overrides[a.split('=', 1)[0]]}" if a.split("=", 1)[0] in overrides
                else self.local(a) for a in command[1:]]
        program = {"python": [sys.executable], "mlflow": [sys.executable, "-m", "mlflow"]}.get(
            command[0], [str(VENV_BIN / command[0])])
        return [*program, *args, *extra]

    def env(self, service: dict, **changes: str) -> dict[str, str]:
        return {**self.base_env, **{k: self.local(v) for k, v in service.get("environment", {}).items()}, **changes}

    def start(self, name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = open(self.tmp_path / f"{name}.log", "w")  # noqa: SIM115 - closed with the stack
        self.exits.callback(log.close)
        # Its own process group: stopping it reaches whatever it started, and nothing else.
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                   start_new_session=True)
        self.exits.callback(_stop, process)
        return process

    def log(self, name: str) -> str:
        return (self.tmp_path / f"{name}.log").read_text()[-3000:]


def _forget_cluster(gcs_port: int) -> None:
    """`ray start` records its head in /tmp/ray/ray_current_cluster, where a later ``ray.init()`` without an
    address would look for a cluster to join; `ray stop` removes it, a stopped ``--block`` head does not."""
    record = Path(tempfile.gettempdir(), "ray", "ray_current_cluster")
    if record.is_file() and record.read_text().strip().endswith(f":{gcs_port}"):
        record.unlink()


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()  # `ray start --block` stops its node's processes on SIGTERM
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # stragglers of this process group only
    except ProcessLookupError:
        pass
    if process.poll() is None:
        process.wait(timeout=10)


def _http(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _wait_until(check, what: str, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with code {process.returncode}")
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{what}: not ready within {timeout:.0f} s")


def _connect(url: str):
    import psycopg2

    parts = urllib.parse.urlsplit(url)
    return psycopg2.connect(host=parts.hostname, port=parts.port, user=parts.username, dbname=parts.path[1:])


@pytest.mark.slow
def test_the_compose_stack_runs_a_sweep_as_local_processes(tmp_path, image_folder, s3_endpoint, postgres_databases):
    import boto3

    secret = {name: secrets.token_hex(16) for name in SECRETS}
    bucket = f"fpa-deploy-{uuid.uuid4().hex[:8]}"
    services = compose({**secret, "S3_BUCKET": bucket})["services"]
    mlflow_db, optuna_db = postgres_databases
    mlflow_port, dashboard_port, optuna_port = free_port(), free_port(), free_port()
    mlflow_url, dashboard_url = f"http://127.0.0.1:{mlflow_port}", f"http://127.0.0.1:{dashboard_port}"
    with ExitStack() as exits:
        stack = Stack(tmp_path, {
            "http://s3:8333": s3_endpoint,
            "postgresql+psycopg2://fpa@postgres:5432/mlflow": mlflow_db,  # this machine's server, fresh databases
            "postgresql+psycopg2://fpa@postgres:5432/optuna": optuna_db,
            "http://mlflow:5000": mlflow_url,
            "http://127.0.0.1:8265": dashboard_url,
        }, exits)

        # The one-shot services: the bucket, created once and found the second time; Optuna's tables.
        for name, expected in (("s3-init", f"bucket {bucket} created"), ("s3-init", f"bucket {bucket} already there"),
                               ("optuna-init", "Optuna's tables are ready")):
            done = subprocess.run(stack.command(services[name], {}), env=stack.env(services[name]), capture_output=True,
                                  text=True, cwd=REPO, timeout=120)
            assert done.returncode == 0 and expected in done.stdout, done.stderr[-2000:]

        # mlflow, with the compose file's auth config except where its users live.
        mlflow = services["mlflow"]
        auth = configparser.ConfigParser()
        auth.read(REPO / Path(mlflow["environment"]["MLFLOW_AUTH_CONFIG_PATH"]).relative_to("/app"))
        auth["mlflow"]["database_uri"] = f"sqlite:///{tmp_path / 'basic_auth.db'}"
        with open(tmp_path / "basic_auth.ini", "w") as f:
            auth.write(f)
        listen = {"--host": "127.0.0.1", "--port": str(mlflow_port)}
        mlflow_server = stack.start("mlflow", stack.command(mlflow, listen),
                                    stack.env(mlflow, MLFLOW_AUTH_CONFIG_PATH=str(tmp_path / "basic_auth.ini")))

        # ray-head, with the head's secrets and stores in its environment. The extra ports keep it clear of any
        # other Ray on this machine; in a container the defaults are free.
        head = services["ray-head"]
        head_env = stack.env(head)
        assert [head_env[name] for name in STORE_VARIABLES] == [f"s3://{bucket}/sweeps", mlflow_url, optuna_db]
        gcs_port = free_port()
        listen = {"--port": str(gcs_port), "--dashboard-host": "127.0.0.1", "--dashboard-port": str(dashboard_port)}
        stack.exits.callback(_forget_cluster, gcs_port)  # runs after the head has stopped
        ray_head = stack.start("ray-head", stack.command(
            head, listen,
            extra=(f"--dashboard-agent-listen-port={free_port()}", f"--ray-client-server-port={free_port()}")),
            head_env)

        dashboard = services["optuna-dashboard"]
        optuna_dashboard = stack.start("optuna-dashboard", stack.command(dashboard, {
            "--host": "127.0.0.1", "--port": str(optuna_port), "--artifact-dir": str(tmp_path / "optuna-artifacts")}),
            stack.env(dashboard))

        token = {"Authorization": f"Bearer {secret['RAY_AUTH_TOKEN']}"}
        try:
            wait_for_http(f"{mlflow_url}/health", mlflow_server, timeout=240)
            _wait_until(lambda: _http(f"{dashboard_url}/api/jobs/", token)[0] == 200, "Ray's job server", ray_head, 240)
            wait_for_http(f"http://127.0.0.1:{optuna_port}/api/studies", optuna_dashboard, timeout=120)
        except RuntimeError as e:
            raise AssertionError(f"{e}\n{stack.log('mlflow')}\n{stack.log('ray-head')}\n"
                                 f"{stack.log('optuna-dashboard')}") from None

        # The README's command, as `docker compose exec ray-head` runs it: with the head's environment. It
        # names no store: the job, on the head, takes them from the head's environment as well.
        name = f"deploy-{uuid.uuid4().hex[:6]}"
        sweep = sweep_file(tmp_path, image_folder, {"model.d_hidden": [8, 16]})
        args = [stack.local(a) for a in the_sweep_command()]
        args[args.index("--dataset") + 1] = sweep
        result = subprocess.run([sys.executable, "sweeps/launch.py", *args, "--name", name, "--num-trials", "2",
                                 "--pruner", "none"], env=head_env, capture_output=True, text=True, cwd=REPO,
                                timeout=480)
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:] + stack.log("mlflow")
        assert "SUCCEEDED" in result.stdout
        (entrypoint,) = re.findall(r"^submitted job \S+ to \S+: (.*)$", result.stdout, re.M)
        assert not {"--storage", "--tracking-uri", "--optuna-storage"} & set(shlex.split(entrypoint))

        # The bucket: the sweep's summary and checkpoints, and MLflow's pictures, written through the server.
        s3 = boto3.client("s3", endpoint_url=s3_endpoint, aws_access_key_id=secret["S3_ACCESS_KEY"],
                          aws_secret_access_key=secret["S3_SECRET_KEY"], region_name="us-east-1")
        keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
                for o in page.get("Contents", [])]
        summary = json.loads(s3.get_object(Bucket=bucket, Key=f"sweeps/{name}/summary.json")["Body"].read())
        assert [t["state"] for t in summary["trials"]] == ["COMPLETE", "COMPLETE"]
        for trial in summary["trials"]:
            assert f"sweeps/{name}/trials/{trial['trial_id']}/checkpoints/best.pt" in keys
        assert any(k.startswith("mlartifacts/") and "/images/samples+step+" in k and k.endswith(".png") for k in keys)
        assert any(k.startswith("mlartifacts/") and k.endswith("fid_vs_step.png") for k in keys)

        # The README's promote command on the head, with its defaults: the sweep's summary from the bucket,
        # its best generator registered in MLflow, champion of a registry that had none, stored in the bucket.
        promote = [name if a == "NAME" else a for a in head_command("sweeps/promote.py")]
        promoted = subprocess.run([sys.executable, "sweeps/promote.py", *promote], env=head_env, capture_output=True,
                                  text=True, cwd=REPO, timeout=300)
        assert promoted.returncode == 0, promoted.stdout[-2000:] + promoted.stderr[-3000:]
        registered = json.loads(promoted.stdout.strip().splitlines()[-1])
        assert registered["champion"] is True and registered["version"] == 1, registered
        keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
                for o in page.get("Contents", [])]
        assert any(k.startswith("mlartifacts/") and k.endswith("/generator.pt") for k in keys)

        # PostgreSQL: the sweep's runs in MLflow's database, its trials in Optuna's.
        with _connect(mlflow_db) as connection, connection.cursor() as cursor:
            cursor.execute("SELECT r.status FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
                           "WHERE t.key = 'fpa.sweep' AND t.value = %s", (name,))
            assert sorted(row[0] for row in cursor.fetchall()) == ["FINISHED"] * 3  # the sweep and two trials
        with _connect(optuna_db) as connection, connection.cursor() as cursor:
            cursor.execute("SELECT t.state FROM trials t JOIN studies s ON s.study_id = t.study_id "
                           "WHERE s.study_name = %s", (name,))
            assert sorted(row[0] for row in cursor.fetchall()) == ["COMPLETE", "COMPLETE"]
        status, body = _http(f"http://127.0.0.1:{optuna_port}/api/studies")
        assert status == 200 and name in {s["study_name"] for s in json.loads(body)["study_summaries"]}

        # MLflow refuses a request without credentials (or with wrong ones), and one for a host it does not serve.
        search = f"{mlflow_url}/api/2.0/mlflow/experiments/search?max_results=10"
        basic = "Basic " + base64.b64encode(f"admin:{secret['MLFLOW_ADMIN_PASSWORD']}".encode()).decode()
        wrong = "Basic " + base64.b64encode(b"admin:not-the-password").decode()
        assert _http(search)[0] == 401
        assert _http(search, {"Authorization": wrong})[0] == 401
        status, body = _http(search, {"Authorization": basic})
        assert status == 200 and any(e["name"].startswith("fpa-") for e in json.loads(body)["experiments"])
        assert _http(search, {"Authorization": basic, "Host": "attacker.example"})[0] in (400, 403)
        # So does Ray's job server, without its token.
        assert _http(f"{dashboard_url}/api/jobs/")[0] == 401
