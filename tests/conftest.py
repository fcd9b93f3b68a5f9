"""Shared fixtures: real servers on free loopback ports, started and stopped by the tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest


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


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's S3 server as a separate process: a real HTTP S3 endpoint on loopback."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(endpoint, process)
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


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path_factory, monkeypatch):
    """Dataset and FID caches in a per-session folder, never in the user's home."""
    cache = tmp_path_factory.getbasetemp() / "fpa-cache"
    monkeypatch.setenv("FPA_CACHE_DIR", str(cache))
    monkeypatch.setenv("FPA_DATA_ROOT", os.fspath(tmp_path_factory.getbasetemp() / "fpa-data"))


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
