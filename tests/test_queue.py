"""Sweeps queued on one Ray cluster: a real `ray start --head` with one sweep slot and its job server. Two
submitted sweeps run one after the other, `fpa-status` shows them, and a cancelled sweep resumes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import optuna
from conftest import child_runs, ray_token, run_launch, sweep_file, tracking_db
from local_stack import http

from sweeps.jobs import JOB_METADATA, NO_AGENT, submit_job

ROOT = Path(__file__).resolve().parent.parent


def _status_command(*args) -> subprocess.CompletedProcess:
    """fpa-status in a process of its own (Ray reads its token mode once, when it is imported)."""
    return subprocess.run([str(Path(sys.executable).parent / "fpa-status"), *args], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)


def _status(*args) -> dict[str, dict]:
    result = _status_command(*args, "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    return {row["name"]: row for row in json.loads(result.stdout)}


def _jobs(address: str) -> dict[str, str]:
    """Each sweep's newest job status, straight from the job server: what the waits poll (cheap, where a
    fpa-status process would take seconds of CPU from the sweeps it waits for)."""
    status, body = http(f"{address}/api/jobs/", ray_token())
    assert status == 200, body[-500:]
    jobs = sorted(json.loads(body), key=lambda job: job.get("start_time") or 0)
    return {job["metadata"][JOB_METADATA]: job["status"] for job in jobs if JOB_METADATA in (job.get("metadata") or {})}


def _wait(check, what: str, timeout: float = 420) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"no {what} within {timeout} s")


def _evaluated(db: Path, study: str) -> bool:
    """Whether a trial of ``study`` has reported an evaluation; False until the driver has made the study
    (its database file comes a moment before the study's row)."""
    try:
        return db.exists() and any(t.intermediate_values for t in
                                   optuna.load_study(study_name=study, storage=f"sqlite:///{db}").trials)
    except KeyError:
        return False


def test_two_sweeps_queue_for_one_slot_and_a_cancelled_one_resumes(tmp_path, image_folder, ray_head):
    """The queue, status, cancel and resume are the service's own: the sweeps are simulated (their trials
    replay the curve model, sleeping a fraction of a second a step instead of training), so that the test spends its time on
    them and not on training."""
    sweep = sweep_file(tmp_path, image_folder, {"model.d_hidden": [8, 16]}, steps=9)
    storage, tracking = tmp_path / "out", tracking_db(tmp_path)
    simulated = ["--simulate", "model", "--step-seconds", "0.3"]
    common = ["--dataset", sweep, "--num-trials", "1", "--pruner", "none", "--storage", str(storage),
              "--tracking-uri", tracking, *simulated]
    look = ["--storage", str(storage), "--address", ray_head]
    for name in ("first", "second"):
        submitted = run_launch(*common, "--name", name, "--submit", ray_head, "--detach", timeout=120)
        assert submitted.returncode == 0, submitted.stderr[-3000:]
        assert "takes one of the cluster's 1 sweep slots" in submitted.stdout and "ray job logs" in submitted.stdout

    # Ray holds the second PENDING while the first runs, and status says so.
    _wait(lambda: _jobs(ray_head).get("first") == "RUNNING", "first sweep running")
    rows = _status(*look)
    assert rows["second"]["job"]["status"] == "PENDING" and rows["second"]["state"] == "queued"
    assert rows["first"]["state"] == "running"
    table = _status_command(*look)
    assert table.returncode == 0 and all(len(line) <= 100 for line in table.stdout.splitlines())
    assert "first" in table.stdout and "second" in table.stdout

    _wait(lambda: {_jobs(ray_head).get(n) for n in ("first", "second")} == {"SUCCEEDED"}, "both sweeps finished")
    rows, spans = _status(*look), {}
    for name in ("first", "second"):
        summary = json.loads((storage / name / "summary.json").read_text())
        assert [(t["state"], t["steps"]) for t in summary["trials"]] == [("COMPLETE", 9)]  # nothing lost
        _, parent, runs = child_runs(tracking, summary)
        assert parent.info.status == "FINISHED" and len(runs) == 1  # nothing duplicated
        spans[name] = (runs[0].info.start_time, runs[0].info.end_time)
        row = rows[name]
        assert row["state"] == "finished" and row["trials_done"] == row["trials_total"] == 1
        assert row["best_fid"] == summary["best"]["fid"] and row["cpu_hours"] > 0 and row["gpu_hours"] == 0
    assert spans["second"][0] > spans["first"][1]  # one trial after the other, never both at once

    # A sweep cancelled while it runs stays resumable, and --resume finishes it.
    (tmp_path / "long").mkdir()
    longer = sweep_file(tmp_path / "long", image_folder, {"model.d_hidden": [8, 16]}, steps=300, log_every=10,
                        **{"fid.every": 30, "checkpoint.every": 30})
    submitted = run_launch("--dataset", longer, "--num-trials", "2", "--pruner", "none", "--storage", str(storage),
                           "--tracking-uri", tracking, "--name", "third", "--submit", ray_head, "--detach",
                           "--simulate", "model", "--step-seconds", "0.04", timeout=120)
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    _wait(lambda: _evaluated(storage / "third" / "optuna.db", "third"), "third sweep's first evaluation")
    cancelled = _status_command(*look, "--cancel", "third")
    assert cancelled.returncode == 0 and "--resume third" in cancelled.stdout, cancelled.stdout + cancelled.stderr
    _wait(lambda: _jobs(ray_head).get("third") == "STOPPED", "third sweep stopped", timeout=180)
    assert _status(*look)["third"]["state"] == "interrupted"
    again = _status_command(*look, "--cancel", "third")
    assert again.returncode == 2 and "is interrupted, not running or queued" in again.stderr  # nothing to cancel
    resumed = run_launch("--resume", "third", "--storage", str(storage), "--tracking-uri", tracking, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    summary = json.loads((storage / "third" / "summary.json").read_text())
    assert [(t["state"], t["steps"]) for t in summary["trials"]] == [("COMPLETE", 300)] * 2
    assert _status(*look)["third"]["state"] == "finished"


def test_a_submission_waits_for_the_heads_job_agent_and_no_longer():
    """A loaded head answers 500 "No available agent" until its job agent is up: the same submission again."""
    class Head:
        def __init__(self, busy: int, error: str = f"Request failed with status code 500: {NO_AGENT}, please try "
                                                      "again later."):
            self.busy, self.error, self.calls = busy, error, []

        def submit_job(self, **job):
            self.calls.append(job)
            if len(self.calls) <= self.busy:
                raise RuntimeError(self.error)
            return job["submission_id"]

    head = Head(busy=2)
    assert submit_job(head, poll_s=0.01, submission_id="fpa-a") == "fpa-a"
    assert [c["submission_id"] for c in head.calls] == ["fpa-a"] * 3
    for head in (Head(busy=10**6), Head(busy=1, error="Request failed with status code 400: bad runtime_env")):
        try:
            submit_job(head, wait_s=0.05, poll_s=0.01, submission_id="fpa-b")
        except RuntimeError as e:
            assert str(e) == head.error  # Ray's own message, once the wait is over or at once for another error
        else:
            raise AssertionError("submitted")
    assert len(head.calls) == 1


def test_a_sweeps_state_from_its_summary_study_and_job():
    """sweeps/status.py's rows from what the stores hold (no I/O): each state, its figures, a table that fits."""
    import os
    import socket

    from sweeps.overview import sweep_row, table

    record = {"settings": {"num_trials": 4, "metric": "kid"}}
    here = {"host": socket.gethostname(), "pid": os.getpid(), "since": 100.0}
    dead = {**here, "pid": 2**22 + 12345}  # above any pid this machine hands out
    study = {"states": {"COMPLETE": 1, "PRUNED": 1, "RUNNING": 2}, "seconds": 7200.0, "driver": here,
             "driver_seconds": 3600.0, "resources": {"cpu": 1, "gpu": 0.25},
             "evaluations": [{"step": 500, "fid": 40.0, "kid": 0.02}, {"step": 1000, "fid": 35.0, "kid": 0.03}]}
    running = sweep_row("a", record, None, study, None, now=1900.0)
    assert running["state"] == "running" and running["trials_done"] == 2 and running["trials_total"] == 4
    assert (running["best_fid"], running["best_kid"]) == (40.0, 0.02)  # the best by the sweep's metric, KID
    assert running["wall_hours"] == 1.5 and running["gpu_hours"] == 0.5 and running["cpu_hours"] == 2.0
    assert sweep_row("a", record, None, {**study, "driver": dead}, None, 1900.0)["state"] == "interrupted"
    assert sweep_row("a", record, None, {**study, "driver": None}, None, 1900.0)["state"] == "interrupted"
    queued = sweep_row("q", None, None, None, {"job_id": "j", "status": "PENDING"}, 0.0)
    assert queued["state"] == "queued" and queued["trials_total"] is None
    stopped = sweep_row("a", record, None, study, {"job_id": "j", "status": "STOPPED"}, 1900.0)
    assert stopped["state"] == "interrupted"
    summary = {"trials": [{"state": "COMPLETE"}, {"state": "PRUNED"}], "best": {"fid": 30.0, "kid": 0.004},
               "cost": {"wall_hours": 0.1, "gpu_hours": 0.0, "cpu_hours": 0.2}}
    finished = sweep_row("f" * 90, record, summary, None, None, 0.0)
    assert finished["state"] == "finished" and finished["trials_done"] == 2 and finished["best_fid"] == 30.0
    lines = table([running, queued, finished], width=80).splitlines()
    assert len(lines) == 4 and all(len(line) <= 80 for line in lines) and "~" in lines[3]
