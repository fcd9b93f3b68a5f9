"""What MLflow 3's server-side job runner costs a tracking server: time to /health, processes and memory.

    python benchmarks/mlflow_server_start.py [--rounds 2]

Starts `mlflow server` on SQLite in a temporary folder with MLFLOW_SERVER_ENABLE_JOB_EXECUTION on (MLflow's
default) and off (docker-compose.yml's, deploy/k8s's), interleaved, and prints, per start, the seconds until
/health answers and, 20 s later, how many processes the server has and their resident memory.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import socket
import urllib.request
from pathlib import Path

import psutil



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(job_execution: bool, folder: Path) -> tuple[float, int, float]:
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": str(job_execution).lower()}
    begin = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                                "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}", "--workers", "1"],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                time.sleep(0.1)
        ready = time.perf_counter() - begin
        time.sleep(20)  # the job runner's workers start after the server answers
        tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
        rss = sum(p.memory_info().rss for p in tree if p.is_running()) / 2**30
        return ready, len(tree), rss
    finally:
        os.killpg(process.pid, 9)
        process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print("| job execution | seconds to /health | processes | resident memory |\n|---|---:|---:|---:|")
    for _ in range(args.rounds):
        for on in (True, False):
            with tempfile.TemporaryDirectory() as folder:
                ready, count, rss = start(on, Path(folder))
            print(f"| {'on (default)' if on else 'off'} | {ready:.1f} | {count} | {rss:.2f} GB |", flush=True)


if __name__ == "__main__":
    main()
