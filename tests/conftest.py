"""Shared fixtures: real servers on free loopback ports, started and stopped by the tests."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml


# What a test starts, by the fixtures it uses: ``make test-fast`` runs the tests that start none of these. A test
# that starts one another way carries the marker itself; the guards below fail a test that starts one unmarked.
STARTS = {"ray": {"local_ray", "fresh_ray", "ray_head"},
          "server": {"s3_endpoint", "s3_bucket", "mlflow_server", "postgres_databases"},
          "process": set()}


def pytest_collection_modifyitems(config, items):
    for item in items:
        for marker, fixtures in STARTS.items():
            if fixtures & set(getattr(item, "fixturenames", ())):
                item.add_marker(marker)


@pytest.fixture(autouse=True)
def _nothing_started_unmarked(request, monkeypatch):
    """A test marked neither ``ray`` nor ``process`` (nor ``server``) that starts a Ray in this process, or a new
    Python process (a command line, a server), fails naming the marker it lacks: the fast tier stays a unit
    tier."""
    marks = {m.name for m in request.node.iter_markers()}
    if "ray" not in marks and importlib.util.find_spec("ray") is not None:
        import ray

        def refuse_ray(*args, **kwargs):
            raise AssertionError(f"{request.node.nodeid} starts a Ray cluster: mark it @pytest.mark.ray")

        monkeypatch.setattr(ray, "init", refuse_ray)
    if not marks & {"process", "server", "ray"}:
        venv_bin = Path(sys.executable).parent

        class Guarded(subprocess.Popen):
            def __init__(self, args, *rest, **kwargs):
                program = Path(str(args[0] if isinstance(args, (list, tuple)) else str(args).split()[0]))
                if program.parent == venv_bin or program.name.startswith("python"):
                    raise AssertionError(f"{request.node.nodeid} starts {program.name}: mark it @pytest.mark.process")
                super().__init__(args, *rest, **kwargs)

        monkeypatch.setattr(subprocess, "Popen", Guarded)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url: str, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server for {url} exited with code {process.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return  # it answers, if not with 200
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"no answer from {url} within {timeout:.0f} s")


def start_moto() -> tuple[subprocess.Popen, str]:
    """A moto S3 server on a free loopback port, once it answers: (the process, its endpoint URL)."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(endpoint, process)
    except BaseException:
        process.kill()
        raise
    return process, endpoint


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's S3 server as a separate process: a real HTTP S3 endpoint on loopback."""
    process, endpoint = start_moto()
    try:
        yield endpoint
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def s3_bucket(s3_endpoint, monkeypatch):
    """A fresh bucket on the S3 server; the AWS environment points at it for the test."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-access-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret-key")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    import boto3

    name = f"fpa-test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture(autouse=True, scope="session")
def _isolated_caches(tmp_path_factory):
    """Dataset and FID caches in a per-session folder, never in the user's home (for module fixtures too)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FPA_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "fpa-cache"))
        patch.setenv("FPA_DATA_ROOT", os.fspath(tmp_path_factory.getbasetemp() / "fpa-data"))
        yield


@pytest.fixture(scope="session")
def digits_16(tmp_path_factory):
    """scikit-learn's digits at 16 x 16, (1797, 16, 16, 3) uint8."""
    import numpy as np

    from fpa_core.data import load_images

    return np.asarray(load_images("digits", 16, cache_dir=tmp_path_factory.mktemp("digits")).images)


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    """48 small RGB images (coloured bars on a gradient): a dataset whose real FID statistics are quick."""
    import numpy as np
    from PIL import Image

    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(48):
        pixels = np.zeros((20, 20, 3), np.uint8)
        pixels[..., 0] = np.linspace(0, 255, 20, dtype=np.uint8)[None, :]
        pixels[..., 2] = 255 - 10 * (i % 24)
        row = int(rng.integers(2, 16))
        pixels[row:row + 3, 3:17] = rng.integers(0, 256, 3, dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:02d}.png")
    return folder


# -- the sweep service's pieces: tiny sweep files, a local Ray, an MLflow server, PostgreSQL, a Ray head --

TINY_FIXED = {
    "data.resolution": 16, "model.height": 16, "model.width": 16, "model.steps": 4, "model.d_latent": 8,
    "model.d_in": 2, "model.d_in_proj": 8, "discriminator.fmap_max": 16, "discriminator.attn_res_layers": [],
    "discriminator.small_head_attention": False, "optim.batch_size": 4, "fid.dims": 64, "fid.num_images": 16,
    "fid.batch_size": 16, "fid.every": 3, "checkpoint.every": 3, "steps": 6, "pictures.samples": 4,
    "pictures.paintings": 1, "log_every": 3, "device": "cpu",
    "ema.every": 1, "ema.beta": 0.0,  # the EMA copy is G itself: a few steps must show in the FIDs
}


def sweep_file(tmp_path: Path, dataset: Path, space: dict, **fixed) -> str:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({"dataset": str(dataset), "base": "digits", "fixed": {**TINY_FIXED, **fixed},
                                    "space": space}))
    return str(path)


@pytest.fixture
def local_ray(_ray_shut_down_at_the_end):
    """A local Ray with 2 CPUs in this process, kept up for the next test that asks for it (starting one takes
    seconds). A test that needs a Ray of its own calls ``own_ray()`` first."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False)
    yield


@pytest.fixture
def fresh_ray():
    """A local Ray of its own, started after the fixtures before it (its workers see the environment they set,
    e.g. an S3 endpoint), stopped after the test."""
    import ray

    own_ray()
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False)
    yield
    ray.shutdown()


def own_ray() -> None:
    """Stop the shared local Ray, so that a test can start the cluster it needs."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="session")
def _ray_shut_down_at_the_end():
    yield
    own_ray()


def tracking_db(folder: Path, name: str = "mlflow.db") -> str:
    """The URI of a SQLite MLflow store in ``folder``, new unless it is there: a copy of one that MLflow set up
    once this session (its schema migrations take a second or more per new store)."""
    template = Path(os.environ["FPA_CACHE_DIR"]).parent / "mlflow-template.db"
    if not template.is_file():
        from mlflow.tracking import MlflowClient

        MlflowClient(f"sqlite:///{template}").search_experiments()
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / name).exists():  # a store already there is the test's own: kept
        shutil.copyfile(template, folder / name)
    return f"sqlite:///{folder / name}"


def settings(tmp_path: Path, **kwargs):
    """A new sweep's settings in ``tmp_path``: its folder, MLflow in mlflow.db, Optuna's default SQLite."""
    from sweeps.sweep import new_settings

    base = dict(name=f"sweep-{uuid.uuid4().hex[:6]}", storage=str(tmp_path / "sweeps_out"),
                tracking_uri=kwargs.pop("tracking_uri", None) or tracking_db(tmp_path), num_trials=4, pruner="none",
                seed=0)
    return new_settings(**{**base, **kwargs})


def child_runs(tracking_uri: str, summary: dict):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    parent = client.get_run(summary["parent_run_id"])
    runs = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    return client, parent, runs


@pytest.fixture
def mlflow_server(tmp_path, s3_bucket, s3_endpoint):
    port = free_port()
    # As docker-compose.yml's server: no job runner (eight more processes, for GenAI features the sweeps never use).
    env_overrides = {"MLFLOW_S3_ENDPOINT_URL": s3_endpoint, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", f"s3://{s3_bucket}/mlartifacts", "--workers", "1"],
        env={**os.environ, **env_overrides}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/health", process, timeout=120)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)


def _postgres_database(name: str, create: bool) -> None:
    import psycopg2

    connection = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="test")
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"' if create else f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    connection.close()


@pytest.fixture
def postgres_databases():
    names = [f"fpa_test_{kind}_{uuid.uuid4().hex[:8]}" for kind in ("mlflow", "optuna")]
    try:
        for name in names:
            _postgres_database(name, create=True)
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"no PostgreSQL server at 127.0.0.1:5432 ({e})")
    yield [f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}" for name in names]
    for name in names:
        _postgres_database(name, create=False)


def run_main(main, *args) -> SimpleNamespace:
    """A command line's ``main(argv)`` run in this process, without a new interpreter (the same parser, checks
    and messages): its returncode, stdout and stderr, as ``subprocess.run`` gives them."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    return SimpleNamespace(returncode=code or 0, stdout=out.getvalue(), stderr=err.getvalue())


def run_launch(*args, timeout=120, env=None):
    return subprocess.run([sys.executable, "sweeps/launch.py", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=Path(__file__).resolve().parent.parent,
                          env={**os.environ, **(env or {})})


def ray_token() -> dict[str, str]:
    """The header with Ray's token, where this machine has one (~/.ray/auth_token, which the first local Ray
    makes): a head started here then requires it."""
    token = Path.home() / ".ray" / "auth_token"
    return {"Authorization": f"Bearer {token.read_text().strip()}"} if token.is_file() else {}


@pytest.fixture
def ray_head(tmp_path):
    """A real Ray head with its dashboard and job server, as `ray start --head` makes one, with one sweep slot
    (docker-compose.yml's head declares FPA_SWEEP_SLOTS) and a job queue that waits an hour. It runs with
    `--block` in a process group of its own and stops with it: never `ray stop`, which would stop every Ray on
    this machine, a sweep beside the tests included."""
    from local_stack import forget_cluster, http, stop, wait_until

    from sweeps.jobs import SLOTS

    own_ray()
    dashboard, gcs = free_port(), free_port()
    ray_bin = str(Path(sys.executable).parent / "ray")
    # The job's `python` is the head's: this virtualenv's, as a cluster image's would be its own.
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "RAY_JOB_START_TIMEOUT_SECONDS": "3600"}
    url = f"http://127.0.0.1:{dashboard}"
    with open(tmp_path / "ray-head.log", "w") as log:
        head = subprocess.Popen([ray_bin, "start", "--head", "--block", "--port", str(gcs), "--num-cpus", "2",
                                 "--resources", '{"fpa_sweep_slots": 1}', "--include-dashboard", "true",
                                 "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
                                 "--disable-usage-stats"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            # Ready when its job server answers and its state API lists the slot: the job server can answer a
            # moment before the node's resources show, when a sweep submitted then would not be queued.
            def ready() -> bool:
                nodes = http(f"{url}/api/v0/nodes?detail=1", ray_token())
                return http(f"{url}/api/jobs/", ray_token())[0] == 200 and nodes[0] == 200 and SLOTS in str(nodes[1])

            wait_until(ready, "Ray's job server and its sweep slot", head, 240)
            yield url
        finally:
            stop(head)
            forget_cluster(gcs)

