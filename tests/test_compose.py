"""docker-compose.yml, deploy/Dockerfile and deploy/claim-gpu.sh, tested on a machine without Docker: the file is
parsed as compose would and held to what it promises."""

from __future__ import annotations

import configparser
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from compose_file import (COMPOSE, DEFAULT_PORTS, ONE_SHOT, PROJECT_SERVICES, REPO, SECRET_NAME, SECRETS,
                          STORE_VARIABLES, compose, env_example, filled_env, flags, head_command, head_commands,
                          launch_args, raw_compose, referenced_variables, service_hosts, the_sweep_command)


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
    assert {c[0] for c in head_commands()} == {"sweeps/launch.py", "fpa-promote", "fpa-continue"}
    resumed = launch_args(head_command("sweeps/launch.py", "--resume"), head["environment"])
    assert resumed.resume == "NAME" and resumed.submit == args.submit and resumed.storage == args.storage
    continued = head_command("fpa-continue")
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


def test_the_file_follows_the_compose_specification():
    """The file, interpolated, against the Compose Specification's JSON schema (tests/data/compose_spec.json, as
    docker-compose 1.29.2's wheel ships it: compose/config/compose_spec.json, Apache-2.0), the schema that
    `docker compose config` checks with; no Docker engine or compose plugin runs here. That schema predates the
    top-level `name:`, which is checked apart."""
    import jsonschema

    schema = json.loads((REPO / "tests" / "data" / "compose_spec.json").read_text())
    document = compose(filled_env())
    assert isinstance(document.pop("name"), str)
    validator = jsonschema.Draft7Validator(schema)
    assert [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(document)] == []
    document["services"]["mlflow"]["helthcheck"] = document["services"]["mlflow"].pop("healthcheck")  # a typo
    assert any("helthcheck" in e.message for e in validator.iter_errors(document))
