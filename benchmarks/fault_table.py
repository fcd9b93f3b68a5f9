"""Storage faults under a real training run, timed: what the user sees, the steps lost, the time to recover.

    FPA_S3_MAX_ATTEMPTS=3 FPA_S3_TIMEOUT=10 python benchmarks/fault_table.py [--steps 200] [--every 20]

Each row trains the tiny digits config of the fault tests (tests/test_faults.py) with ``python -m
fpa_core.train``, checkpointing every --every steps, injects the fault once the run has passed step
--every + --every // 2, and then continues the run with ``--resume`` once the fault is gone:
- a full disk: a 64 MB tmpfs filled under the run (needs root to mount);
- S3 that stops answering: the run's own moto server stopped with SIGSTOP (then SIGCONT);
- S3 that dies: the moto server killed (no resume: its objects were in its memory).
Steps lost: the step the run had reached when it stopped (its message says), minus the step of the checkpoint
it resumed from.
Time to notice: from the fault to the run's exit. Time to recover: the resumed run's time to get back to
the step it had reached.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from moto_s3 import start_moto

from fpa_core.config import set_flags

ROOT = Path(__file__).resolve().parent.parent
TINY = set_flags(ROOT / "tests" / "data" / "tiny-run.yaml")  # the fault tests' tiny run

LAST_GOOD = re.compile(r"the last good checkpoint is (\S+?)\. ")


def _steps(metrics: str, resumed: bool = False) -> list[int]:
    """The steps logged (with ``resumed``: only those logged after the last resume)."""
    records = [json.loads(line) for line in metrics.splitlines() if line.strip()]
    if resumed:
        starts = [i for i, r in enumerate(records) if r.get("event") == "resumed"]
        records = records[starts[-1] + 1:] if starts else []
    return [r["step"] for r in records if "d_loss" in r]


def _run(out: str, steps: int, every: int, env: dict, resume: bool = False) -> subprocess.Popen:
    args = ["--out", out, "--resume"] if resume else [
        "--config", "digits", "--out", out, "--steps", str(steps), *TINY, "--set", f"checkpoint.every={every}",
        "--set", f"fid.every={steps}"]
    return subprocess.Popen([sys.executable, "-m", "fpa_core.train", "-q", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **env}, cwd=ROOT)


def _row(name: str, out: str, read_metrics, inject, heal, steps: int, every: int, env: dict) -> dict:
    run = _run(out, steps, every, env)
    while max(_steps(read_metrics()), default=0) < every + every // 2:
        assert run.poll() is None, run.communicate()[1][-2000:]
        time.sleep(0.02)
    faulted = time.perf_counter()
    inject()
    _, stderr = run.communicate(timeout=600)
    noticed = time.perf_counter() - faulted
    message = next((line for line in stderr.splitlines() if line.startswith("error:")), stderr[-300:])
    stopped = re.search(r"lost its storage at step (\d+)", message)
    reached = int(stopped.group(1)) if stopped else None
    row = {"fault": name, "exit": run.returncode, "message": message, "noticed_s": noticed}
    last = LAST_GOOD.search(stderr)
    if heal is None or last is None or reached is None:
        return row
    heal()
    from_step = int(re.search(r"latest-(\d+)\.pt", last.group(1)).group(1))
    start = time.perf_counter()
    resumed = _run(out, steps, every, env, resume=True)
    while max(_steps(read_metrics(), resumed=True), default=0) < reached and resumed.poll() is None:
        time.sleep(0.02)
    recovered = time.perf_counter() - start
    resumed.communicate(timeout=600)
    return {**row, "last_good_step": from_step, "reached_step": reached, "steps_lost": reached - from_step,
            "recover_s": recovered, "resumed_exit": resumed.returncode}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--every", type=int, default=20)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        disk = Path(tmp, "disk")
        disk.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(disk)]).returncode == 0:
            filler = disk / "filler"

            def fill():
                with open(filler, "wb") as f:
                    try:
                        while True:
                            f.write(b"\0" * 2**20)
                    except OSError:
                        pass

            out = disk / "run"
            try:
                rows.append(_row("disk full (tmpfs)", str(out), lambda: (out / "metrics.jsonl").read_text()
                                 if (out / "metrics.jsonl").exists() else "", fill, filler.unlink, args.steps,
                                 args.every, {}))
            finally:
                subprocess.run(["umount", "-l", str(disk)], check=False)

        import boto3

        for name in ("S3 stops answering (SIGSTOP)", "S3 dies (SIGKILL)"):
            server, endpoint = start_moto()
            env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
                   "AWS_DEFAULT_REGION": "us-east-1"}  # retries and timeouts: FPA_S3_* from the environment
            s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="k", aws_secret_access_key="s",
                              region_name="us-east-1")
            s3.create_bucket(Bucket="faults")

            def metrics():
                try:
                    return s3.get_object(Bucket="faults", Key="run/metrics.jsonl")["Body"].read().decode()
                except Exception:  # noqa: BLE001 - not written yet, or the server is stopped
                    return ""

            stop = name.startswith("S3 stops")
            try:
                rows.append(_row(name, "s3://faults/run", metrics,
                                 (lambda: os.kill(server.pid, signal.SIGSTOP)) if stop else server.kill,
                                 (lambda: os.kill(server.pid, signal.SIGCONT)) if stop else None,
                                 args.steps, args.every, env))
            finally:
                os.kill(server.pid, signal.SIGCONT) if server.poll() is None else None
                server.kill()
    for row in rows:
        print(json.dumps(row))
    print("\n| fault | what the user saw | exit | time to notice | steps lost | time to recover |\n"
          "|---|---|---:|---:|---:|---:|")
    for r in rows:
        lost = f"{r['steps_lost']} (step {r['last_good_step']} to {r['reached_step']})" if "steps_lost" in r else "-"
        recover = f"{r['recover_s']:.0f} s" if "recover_s" in r else "-"
        print(f"| {r['fault']} | {r['message'][:160]} | {r['exit']} | {r['noticed_s']:.0f} s | {lost} | {recover} |")


if __name__ == "__main__":
    main()
