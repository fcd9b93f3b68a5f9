"""Every sweep's state, read and never written: what ``fpa-status`` shows. A finished sweep is read from its
summary.json, one that has not finished from its Optuna study (``sweeps.study`` writes the attributes named
here). Only Optuna is imported (Ray's job client only for ``--address``), so that the command starts in a
fraction of a second.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from typing import Any

import optuna
from optuna.trial import TrialState

from fpa_core import storage
from fpa_core.metrics import best_evaluation
from sweeps.sweep import SweepNotFound, list_sweeps, read_record, read_summary

# An ended Optuna trial's state as the sweep names it.
SWEEP_STATES = {TrialState.COMPLETE: "COMPLETE", TrialState.PRUNED: "PRUNED", TrialState.FAIL: "ERROR"}
DRIVER = "fpa.driver"  # the study's attribute: the driver running the sweep now ({host, pid, since}), or None
DRIVER_SECONDS = "fpa.driver_seconds"  # the study's attribute: the sweep's drivers' wall time so far
RESOURCES = "fpa.resources"  # the study's attribute: what each trial takes ({"cpu": 1, "gpu": 0.25})
PROGRESS = "fpa.progress"  # a trial's attribute: its evaluations (every score), placement and seconds so far


def overview(optuna_storage: str, name: str) -> dict[str, Any] | None:
    """A sweep's study at a glance: its trials by state, the evaluations of its ended trials, the trials'
    seconds, its driver (or None) and its drivers' wall time so far. None when there is no study."""
    try:
        study = optuna.load_study(study_name=name, storage=optuna_storage)
    except KeyError:
        return None
    trials = study.get_trials(deepcopy=False)
    states = [SWEEP_STATES.get(t.state, t.state.name) for t in trials if t.state != TrialState.WAITING]
    evaluations = [e for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
                   for e in t.user_attrs.get(PROGRESS, {}).get("evaluations", [])]
    return {"states": {state: states.count(state) for state in sorted(set(states))}, "evaluations": evaluations,
            "seconds": sum(float(t.user_attrs.get(PROGRESS, {}).get("seconds", 0.0)) for t in trials),
            "driver": study.user_attrs.get(DRIVER), "driver_seconds": study.user_attrs.get(DRIVER_SECONDS, 0.0),
            "resources": study.user_attrs.get(RESOURCES, {})}


ENDED = tuple(SWEEP_STATES.values())  # a trial that will not run again


def sweep_row(name: str, record: dict[str, Any] | None, summary: dict[str, Any] | None,
              study: dict[str, Any] | None, job: dict[str, str] | None, now: float) -> dict[str, Any]:
    """One sweep's status from what its storage, study and job queue hold (no I/O)."""
    settings = (record or {}).get("settings", {})
    row: dict[str, Any] = {"name": name, "state": "unknown", "trials_done": 0,
                           "trials_total": settings.get("num_trials"), "best_fid": None, "best_kid": None,
                           "wall_hours": None, "gpu_hours": None, "cpu_hours": None, "driver": None,
                           "job": job, "simulated": settings.get("simulate")}
    if summary is not None:
        best, cost = summary.get("best") or {}, summary.get("cost") or {}
        row.update(state="finished", trials_done=sum(t["state"] in ENDED for t in summary["trials"]),
                   best_fid=best.get("fid"), best_kid=best.get("kid"), wall_hours=cost.get("wall_hours"),
                   gpu_hours=cost.get("gpu_hours"), cpu_hours=cost.get("cpu_hours"))
        return row
    if study is not None:
        metric = (settings.get("metric") or "fid")
        best = best_evaluation(study["evaluations"], metric) or {}
        resources, driver = study["resources"], study["driver"]
        wall = study["driver_seconds"] + (now - driver["since"] if driver else 0.0)
        row.update(trials_done=sum(study["states"].get(s, 0) for s in ENDED), best_fid=best.get("fid"),
                   best_kid=best.get("kid"), wall_hours=wall / 3600,
                   gpu_hours=study["seconds"] * resources.get("gpu", 0) / 3600,
                   cpu_hours=study["seconds"] * resources.get("cpu", 1) / 3600, driver=driver,
                   state="running" if driver else "interrupted")
    if job is not None and job["status"] == "PENDING":
        row["state"] = "queued"
    elif job is not None and job["status"] == "RUNNING" and row["state"] in ("interrupted", "unknown"):
        row["state"] = "running"  # its driver has started and not yet opened the study
    elif job is not None and job["status"] in ("STOPPED", "FAILED", "SUCCEEDED"):
        row["state"] = "interrupted"  # its job ended without a summary
    elif row["driver"] and not _alive(row["driver"]):
        row["state"] = "interrupted"  # its driver died on this machine without saying so
    return row


def _alive(driver: dict[str, Any]) -> bool:
    """Whether a driver is alive; one on another machine is taken at its study's word."""
    if driver.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(driver["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def collect(root: str, optuna_storage: str | None = None, address: str | None = None) -> list[dict[str, Any]]:
    """The status of every sweep in the storage ``root``, and of every sweep job on the cluster at ``address``."""
    jobs = {}
    if address:
        from sweeps.jobs import sweep_jobs

        jobs = sweep_jobs(address)
    rows, now = [], time.time()
    for name in sorted(set(list_sweeps(root)) | set(jobs)):
        record = summary = study = None
        try:
            record = read_record(root, name)
            summary = read_summary(root, name)
        except SweepNotFound:
            pass
        if summary is None and record is not None:
            study = overview(optuna_storage or record["settings"]["optuna_storage"], name)
        row = sweep_row(name, record, summary, study, jobs.get(name), now)
        row["stored_bytes"] = storage.size(storage.join(root, name)) if record is not None else None
        rows.append(row)
    return rows


def table(rows: list[dict[str, Any]], width: int = 100) -> str:
    """The rows as a table that fits ``width`` columns (the sweep names are shortened first)."""
    def number(value, digits):
        return "-" if value is None else f"{value:.{digits}f}"

    head = ("sweep", "state", "trials", "best FID", "best KID", "wall h", "GPU h", "CPU h", "stored GB")
    lines = [(r["name"], r["state"] + (" (simulated)" if r.get("simulated") else ""),
              f"{r['trials_done']}/{r['trials_total'] if r['trials_total'] else '?'}",
              number(r["best_fid"], 2), number(r["best_kid"], 4), number(r["wall_hours"], 2),
              number(r["gpu_hours"], 2), number(r["cpu_hours"], 2),
              number(None if r.get("stored_bytes") is None else r["stored_bytes"] / 1e9, 2)) for r in rows]
    widths = [max(len(row[i]) for row in [head, *lines]) for i in range(len(head))]
    spare = width - (sum(widths) + 2 * (len(widths) - 1))
    if spare < 0:  # shorten the names to fit
        widths[0] = max(8, widths[0] + spare)
    out = []
    for row in [head, *lines]:
        cells = [row[0] if len(row[0]) <= widths[0] else row[0][:widths[0] - 1] + "~", *row[1:]]
        out.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))))
    return "\n".join(line.rstrip() for line in out)


def cancel(row: dict[str, Any], address: str | None) -> str:
    """Stop a queued or running sweep; returns what was done. A ValueError says why it cannot be."""
    name = row["name"]
    if row["state"] in ("queued", "running") and row["job"] is not None and address:
        from sweeps.jobs import stop_job

        stop_job(address, row["job"]["job_id"])
        if row["state"] == "queued" and row["driver"] is None and row["trials_done"] == 0:
            return f"{name}: taken out of the queue before it started (submit it again to run it)"
        return (f"{name}: stopping (Ray job {row['job']['job_id']}); continue it with: python sweeps/launch.py "
                f"--resume {name}")
    driver = row["driver"]
    if row["state"] == "running" and driver and driver.get("host") == socket.gethostname():
        os.kill(int(driver["pid"]), signal.SIGTERM)  # as Ctrl-C: the trials stop, the sweep stays resumable
        return (f"{name}: stopping (SIGTERM to its driver, pid {driver['pid']}); continue it with: python "
                f"sweeps/launch.py --resume {name}")
    if row["state"] == "running":
        raise ValueError(f"{name} runs on {driver.get('host') if driver else 'another machine'}: pass --address "
                         "with the job server it was submitted to, or stop it there")
    raise ValueError(f"{name} is {row['state']}, not running or queued: nothing to cancel")
