"""Run a sweep as a Ray Job: the working directory ships with the job, its logs stream back here.

A cluster whose head declares the custom resource ``fpa_sweep_slots: N`` (deploy/: docker compose, ``ray up``)
runs at most N sweeps at once: each submitted sweep's driver takes one slot (``entrypoint_resources``), and
Ray holds the next one PENDING, shown in its dashboard, until a slot frees. Raise the head's
``RAY_JOB_START_TIMEOUT_SECONDS`` (15 minutes by default) above the longest wait in that queue.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shlex
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
EXCLUDES = [".git", ".venv", "data", "runs", "sweeps_out", "mlruns", "mlartifacts", "*.db", "__pycache__",
            ".pytest_cache", ".hypothesis", ".whl", ".gl"]


log = logging.getLogger(__name__)

SLOTS = "fpa_sweep_slots"  # the head's custom resource: how many sweeps run at once
JOB_METADATA = "fpa_sweep"  # a submitted job's metadata key: the sweep it runs
NO_AGENT = "No available agent to submit job"  # Ray's 500 while the head's job agent is not ready
AGENT_WAIT_S = 120.0  # how long a submission waits for it (a head just started, or a loaded one)


class JobServerUnreachable(ValueError):
    """--submit names an address where no Ray job server answers."""


def submit(address: str, launch_args: list[str], name: str, detach: bool = False) -> int:
    """Submit ``python sweeps/launch.py LAUNCH_ARGS`` (sweep ``name``) to the job server at ``address``; follow
    it unless detached."""
    client = job_client(address, "--submit")
    from ray.job_submission import JobStatus

    entrypoint = command_line(launch_args)
    slots = sweep_slots(address)
    job_id = submit_job(
        client, entrypoint=entrypoint, runtime_env={"working_dir": str(REPO), "excludes": EXCLUDES},
        submission_id=f"fpa-{name}-{time.strftime('%Y%m%d-%H%M%S')}", metadata={JOB_METADATA: name},
        entrypoint_resources={SLOTS: 1} if slots else None)
    print(f"submitted job {job_id} to {address}: {entrypoint}", flush=True)
    if slots:
        print(f"it takes one of the cluster's {slots:g} sweep slots ({SLOTS}); while all are taken it waits "
              "PENDING", flush=True)
    if detach:
        print(f"follow it with: ray job logs --address {address} --follow {job_id}")
        return 0
    asyncio.run(_follow(client, job_id))
    status = client.get_job_status(job_id)
    print(f"job {job_id}: {status}")
    return 0 if status == JobStatus.SUCCEEDED else 1


def submit_job(client, wait_s: float = AGENT_WAIT_S, poll_s: float = 3.0, **job) -> str:
    """``client.submit_job(**job)``, tried again while the head answers that no job agent is ready yet: Ray's
    500 "No available agent to submit job, please try again later" of a head just started or a loaded one,
    which comes before the job exists, so the same submission id is safe to send again."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return client.submit_job(**job)
        except RuntimeError as e:
            if NO_AGENT not in str(e) or time.monotonic() + poll_s > deadline:
                raise
            log.warning("the Ray head has no job agent ready yet; submitting again in %g s (up to %g s)",
                        poll_s, wait_s)
            time.sleep(poll_s)


def job_client(address: str, flag: str = "--address"):
    """Ray's job client for the job server at ``address`` (``flag`` names where it came from, for the message
    when nothing answers there), with Ray's token where one is at hand."""
    _use_token_auth_if_available()  # before Ray is imported: it reads the mode once
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except ConnectionError:
        raise JobServerUnreachable(
            f"{flag} {address}: no Ray job server answers there; start the cluster's head (`ray start --head`, "
            "or `docker compose up`) and pass its dashboard address, e.g. http://HEAD:8265") from None


def sweep_slots(address: str) -> float:
    """How many sweep slots the cluster's nodes declare (Ray's state API on the dashboard); 0 where none do."""
    request = urllib.request.Request(f"{address.rstrip('/')}/api/v0/nodes?detail=1&limit=1000",
                                     headers=_auth_headers())
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            nodes = json.loads(response.read())["data"]["result"]["result"]
    except (OSError, ValueError, KeyError, TypeError) as e:  # no state API there: run the sweep unqueued
        print(f"could not read the cluster's sweep slots ({type(e).__name__}: {e}); the sweep is not queued",
              file=sys.stderr)
        return 0
    return sum(node.get("resources_total", {}).get(SLOTS, 0) for node in nodes if node.get("state") == "ALIVE")


def _auth_headers() -> dict[str, str]:
    """Ray's token, where token auth is on (as the job client sends it)."""
    if os.environ.get("RAY_AUTH_MODE") != "token":
        return {}
    token = os.environ.get("RAY_AUTH_TOKEN")
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if not token and path.is_file():
        token = path.read_text().strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


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


def sweep_jobs(address: str) -> dict[str, dict[str, Any]]:
    """The newest Ray Job of each sweep submitted to the job server at ``address``: sweep -> its job's id,
    status, start and end time."""
    jobs: dict[str, dict[str, Any]] = {}
    for job in sorted(job_client(address).list_jobs(), key=lambda j: j.start_time or 0):
        name = (job.metadata or {}).get(JOB_METADATA)
        if name:
            jobs[name] = {"job_id": job.submission_id, "status": str(job.status.value),
                          "start_time": job.start_time, "end_time": job.end_time}  # ms since the epoch
    return jobs


def stop_job(address: str, job_id: str) -> None:
    """Stop a queued or running job: Ray sends its driver SIGTERM, which a sweep takes as Ctrl-C."""
    job_client(address).stop_job(job_id)
