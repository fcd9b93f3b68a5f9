"""The compose stack's services as local processes, for a machine without Docker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import ExitStack
from pathlib import Path

from compose_file import REPO, STORE_VARIABLES, VENV_BIN, flags


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
        self.exits.callback(stop, process)
        return process

    def log(self, name: str) -> str:
        return (self.tmp_path / f"{name}.log").read_text()[-3000:]


def forget_cluster(gcs_port: int) -> None:
    """`ray start` records its head in /tmp/ray/ray_current_cluster, where a later ``ray.init()`` without an
    address would look for a cluster to join; `ray stop` removes it, a stopped ``--block`` head does not."""
    record = Path(tempfile.gettempdir(), "ray", "ray_current_cluster")
    if record.is_file() and record.read_text().strip().endswith(f":{gcs_port}"):
        record.unlink()


def stop(process: subprocess.Popen) -> None:
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


def http(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_until(check, what: str, process: subprocess.Popen, timeout: float) -> None:
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


def connect(url: str):
    import psycopg2

    parts = urllib.parse.urlsplit(url)
    return psycopg2.connect(host=parts.hostname, port=parts.port, user=parts.username, dbname=parts.path[1:])
