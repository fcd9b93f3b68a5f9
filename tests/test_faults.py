"""Storage faults under a real training run: a disk that fills up, an S3 server that stops answering and one that
dies. Each ends the run with one message that names the last good checkpoint and the resume command (exit 1),
and the resumed run finishes from that checkpoint."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from conftest import start_moto

from fpa_core import checkpoint
from fpa_core.config import set_flags

TINY = set_flags(Path(__file__).parent / "data" / "tiny-run.yaml")
STEPS = 60
LAST_GOOD = re.compile(r"the last good checkpoint is (\S+?)\. ")


def _train(out: str, dataset: Path, env: dict[str, str] | None = None, resume: bool = False) -> subprocess.Popen:
    args = ["--out", out, "--resume"] if resume else ["--config", "digits", "--dataset", str(dataset), "--out", out,
                                                      "--steps", str(STEPS), "--set", f"fid.every={STEPS}", *TINY]
    return subprocess.Popen([sys.executable, "-m", "fpa_core.train", "-q", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})


def _wait_for(check, process: subprocess.Popen, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        assert process.poll() is None, f"the run ended before {what}: {process.communicate()[1][-2000:]}"
        time.sleep(0.05)
    raise AssertionError(f"no {what} within {timeout} s")


def _lost(process: subprocess.Popen, cause: str) -> str:
    """The run's single message: what happened, the last good checkpoint, the resume command; exit 1."""
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 1, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert "error: the run lost its storage at step" in stderr and cause in stderr, stderr[-3000:]
    assert "--resume" in stderr
    found = LAST_GOOD.search(stderr)
    assert found, stderr[-3000:]
    return found.group(1)


def _finished(process: subprocess.Popen, after: int) -> None:
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    assert f"done: {STEPS} steps" in stdout
    assert after < STEPS


@pytest.fixture
def small_disk(tmp_path):
    """A 32 MB tmpfs: a disk that a test can fill. Skipped where mounting is not allowed."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({made.stderr.decode().strip()})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.process
def test_a_full_disk_stops_the_run_with_one_message_and_it_resumes(small_disk, image_folder):
    out = small_disk / "run"
    run = _train(str(out), image_folder)
    _wait_for(lambda: any((out / "checkpoints").glob("latest-*.pt")), run, "first checkpoint")
    filler = small_disk / "filler"
    with open(filler, "wb") as f:  # the disk fills up under the run
        try:
            while True:
                f.write(b"\0" * 2**20)
        except OSError:
            pass
    last = _lost(run, "No space left on device")
    state = checkpoint.load(last)  # the checkpoint the message names is whole
    assert not list((out / "checkpoints").glob(".*.tmp"))  # and the write that failed left nothing behind
    filler.unlink()
    _finished(_train(str(out), image_folder, resume=True), state["step"])


@pytest.fixture
def own_s3(monkeypatch):
    """A moto S3 server of this test's own (it gets stopped and killed), a bucket on it, and the environment that
    points there (this process's too)."""
    import boto3

    server, endpoint = start_moto()
    try:
        env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test-key", "AWS_SECRET_ACCESS_KEY": "test-secret",
               "AWS_DEFAULT_REGION": "us-east-1", "FPA_S3_MAX_ATTEMPTS": "2", "FPA_S3_TIMEOUT": "2"}
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        bucket = f"fpa-faults-{uuid.uuid4().hex[:8]}"
        client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test-key",
                              aws_secret_access_key="test-secret", region_name="us-east-1")
        client.create_bucket(Bucket=bucket)
        yield server, client, bucket, env
    finally:
        os.kill(server.pid, signal.SIGCONT)
        server.kill()
        server.wait(timeout=10)


def _checkpoints_on(client, bucket: str) -> list[str]:
    listed = client.list_objects_v2(Bucket=bucket, Prefix="run/checkpoints/latest-")
    return [o["Key"] for o in listed.get("Contents", [])]


@pytest.mark.server
@pytest.mark.process
def test_s3_that_stops_answering_ends_the_run_with_one_message_and_it_resumes(own_s3, image_folder):
    server, client, bucket, env = own_s3
    out = f"s3://{bucket}/run"
    run = _train(out, image_folder, env)
    _wait_for(lambda: _checkpoints_on(client, bucket), run, "first checkpoint on S3")
    os.kill(server.pid, signal.SIGSTOP)  # the endpoint still accepts connections, and never answers
    try:
        last = _lost(run, "timeout")
    finally:
        os.kill(server.pid, signal.SIGCONT)
    assert last.startswith(f"s3://{bucket}/run/checkpoints/latest-")
    state = checkpoint.load(last)
    _finished(_train(out, image_folder, env, resume=True), state["step"])


@pytest.mark.server
@pytest.mark.process
def test_s3_that_dies_ends_the_run_with_one_message(own_s3, image_folder):
    server, client, bucket, env = own_s3
    run = _train(f"s3://{bucket}/run", image_folder, env)
    _wait_for(lambda: _checkpoints_on(client, bucket), run, "first checkpoint on S3")
    server.kill()  # connections refused from now on
    last = _lost(run, "Could not connect to the endpoint URL")
    assert last.startswith(f"s3://{bucket}/run/checkpoints/latest-")
