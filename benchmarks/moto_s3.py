"""moto's S3 server on a free loopback port, for the benchmarks that need a real HTTP S3 endpoint."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request


def start_moto() -> tuple[subprocess.Popen, str]:
    """A moto S3 server as its own process, once it answers: (the process, its endpoint URL)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            break
        except OSError:
            time.sleep(0.2)
    return server, endpoint
