"""Run a sweep as a Ray Job: the working directory ships with the job, its logs stream back here."""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXCLUDES = [".git", ".venv", "data", "runs", "sweeps_out", "mlruns", "mlartifacts", "*.db", "__pycache__",
            ".pytest_cache", ".hypothesis", ".whl", ".gl"]


class JobServerUnreachable(ValueError):
    """--submit names an address where no Ray job server answers."""


def submit(address: str, launch_args: list[str], detach: bool = False) -> int:
    """Submit ``python sweeps/launch.py LAUNCH_ARGS`` to the job server at ``address``; follow it unless detached."""
    _use_token_auth_if_available()  # before Ray is imported: it reads the mode once
    from ray.job_submission import JobStatus, JobSubmissionClient

    try:
        client = JobSubmissionClient(address)
    except ConnectionError:
        raise JobServerUnreachable(
            f"--submit {address}: no Ray job server answers there; start the cluster's head (`ray start --head`, "
            "or `docker compose up`) and pass its dashboard address, e.g. http://HEAD:8265") from None
    entrypoint = command_line(launch_args)
    job_id = client.submit_job(entrypoint=entrypoint, runtime_env={"working_dir": str(REPO), "excludes": EXCLUDES})
    print(f"submitted job {job_id} to {address}: {entrypoint}", flush=True)
    if detach:
        print(f"follow it with: ray job logs --address {address} --follow {job_id}")
        return 0
    asyncio.run(_follow(client, job_id))
    status = client.get_job_status(job_id)
    print(f"job {job_id}: {status}")
    return 0 if status == JobStatus.SUCCEEDED else 1


def command_line(launch_args: list[str]) -> str:
    """The job's entrypoint: launch.py with the given arguments, quoted for a shell."""
    return "python sweeps/launch.py " + " ".join(shlex.quote(a) for a in launch_args)


async def _follow(client, job_id: str) -> None:
    async for lines in client.tail_job_logs(job_id):
        sys.stdout.write(lines)
        sys.stdout.flush()


def _use_token_auth_if_available() -> None:
    """Ray (2.52+) clusters require a token by default. As ``ray.init`` does, turn token auth on for the
    job client when a token is at hand (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token) and
    RAY_AUTH_MODE does not say otherwise; the token itself is never printed."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if os.environ.get("RAY_AUTH_TOKEN") or path.is_file():
        os.environ["RAY_AUTH_MODE"] = "token"
