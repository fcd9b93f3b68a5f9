"""The compose stack run as local processes with the compose file's own commands and environment: PostgreSQL,
moto's S3, a basic-auth MLflow server, a Ray head with its job server and optuna-dashboard; a sweep submitted
through the job server, then promoted."""

from __future__ import annotations

import base64
import configparser
import json
import re
import secrets
import shlex
import subprocess
import sys
import uuid
from contextlib import ExitStack
from pathlib import Path

import pytest

from compose_file import REPO, SECRETS, STORE_VARIABLES, compose, head_command, the_sweep_command
from conftest import free_port, sweep_file, wait_for_http
from local_stack import Stack, connect, forget_cluster, http, wait_until



@pytest.mark.ray
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
        stack.exits.callback(forget_cluster, gcs_port)  # runs after the head has stopped
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
            wait_until(lambda: http(f"{dashboard_url}/api/jobs/", token)[0] == 200, "Ray's job server", ray_head, 240)
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
        promote = [name if a == "NAME" else a for a in head_command("fpa-promote")]
        promoted = subprocess.run([str(Path(sys.executable).parent / "fpa-promote"), *promote], env=head_env, capture_output=True,
                                  text=True, cwd=REPO, timeout=300)
        assert promoted.returncode == 0, promoted.stdout[-2000:] + promoted.stderr[-3000:]
        registered = json.loads(promoted.stdout.strip().splitlines()[-1])
        assert registered["champion"] is True and registered["version"] == 1, registered
        keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
                for o in page.get("Contents", [])]
        assert any(k.startswith("mlartifacts/") and k.endswith("/generator.pt") for k in keys)

        # PostgreSQL: the sweep's runs in MLflow's database, its trials in Optuna's.
        with connect(mlflow_db) as connection, connection.cursor() as cursor:
            cursor.execute("SELECT r.status FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
                           "WHERE t.key = 'fpa.sweep' AND t.value = %s", (name,))
            assert sorted(row[0] for row in cursor.fetchall()) == ["FINISHED"] * 3  # the sweep and two trials
        with connect(optuna_db) as connection, connection.cursor() as cursor:
            cursor.execute("SELECT t.state FROM trials t JOIN studies s ON s.study_id = t.study_id "
                           "WHERE s.study_name = %s", (name,))
            assert sorted(row[0] for row in cursor.fetchall()) == ["COMPLETE", "COMPLETE"]
        status, body = http(f"http://127.0.0.1:{optuna_port}/api/studies")
        assert status == 200 and name in {s["study_name"] for s in json.loads(body)["study_summaries"]}

        # MLflow refuses a request without credentials (or with wrong ones), and one for a host it does not serve.
        search = f"{mlflow_url}/api/2.0/mlflow/experiments/search?max_results=10"
        basic = "Basic " + base64.b64encode(f"admin:{secret['MLFLOW_ADMIN_PASSWORD']}".encode()).decode()
        wrong = "Basic " + base64.b64encode(b"admin:not-the-password").decode()
        assert http(search)[0] == 401
        assert http(search, {"Authorization": wrong})[0] == 401
        status, body = http(search, {"Authorization": basic})
        assert status == 200 and any(e["name"].startswith("fpa-") for e in json.loads(body)["experiments"])
        assert http(search, {"Authorization": basic, "Host": "attacker.example"})[0] in (400, 403)
        # So does Ray's job server, without its token.
        assert http(f"{dashboard_url}/api/jobs/")[0] == 401

        # No credential on disk or on a console: not in Ray's files (its runtime-env agent logs what Ray Tune
        # puts in a trial's runtime environment), the services' logs, the bucket, either database, nor the
        # commands' output. The secrets are the test's own random values, so any hit is a leak.
        markers = {name: secret[name] for name in ("S3_ACCESS_KEY", "S3_SECRET_KEY", "MLFLOW_ADMIN_PASSWORD")}
        console = result.stdout + result.stderr + promoted.stdout + promoted.stderr
        leaks = [f"{name} on the console" for name, value in markers.items() if value in console]
        grep = subprocess.run(["grep", "-rlaF", *[a for v in markers.values() for a in ("-e", v)], "/tmp/ray",
                               str(tmp_path)], capture_output=True, text=True)
        leaks += [path for path in grep.stdout.splitlines()
                  if Path(path).name not in ("basic_auth.ini", "basic_auth.db")]  # MLflow's own user store
        for key in keys:
            body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            leaks += [f"{name} in s3://{bucket}/{key}" for name, value in markers.items() if value.encode() in body]
        for url in (mlflow_db, optuna_db):
            dump = subprocess.run(["pg_dump", "--data-only", url.replace("+psycopg2", "")], capture_output=True,
                                  text=True, check=True).stdout
            leaks += [f"{name} in {url}" for name, value in markers.items() if value in dump]
        assert not leaks, leaks
