"""Every sweep in a storage (and on a cluster's job queue), at a glance; cancel one.

    python sweeps/status.py                               # the sweeps in --storage (FPA_STORAGE, ./sweeps_out)
    python sweeps/status.py --address http://HEAD:8265    # and the cluster's queued and running sweep jobs
    python sweeps/status.py --json                        # the same, machine-readable
    python sweeps/status.py --cancel NAME [--address ...] # stop a running or queued sweep; it stays resumable

A sweep is queued (its Ray Job waits for a sweep slot), running (its study names a live driver), interrupted
(no driver and no summary: `launch.py --resume NAME` continues it) or finished (its summary.json). Each row
gives its trials ended of all, its best FID and KID so far, its drivers' wall time and what its trials used,
in GPU-hours (CPU-hours where they take no GPU). A sweep's study is read from the Optuna store its sweep.json
names, unless --optuna-storage names another.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fpa_core import storage  # noqa: E402
from fpa_core.evaluations import best_evaluation  # noqa: E402
from sweeps.study_overview import SWEEP_STATES, overview  # noqa: E402
from sweeps.sweep import SweepNotFound, list_sweeps, read_record, read_summary, redact, resolve_storage  # noqa: E402

ENDED = tuple(SWEEP_STATES.values())  # a trial that will not run again


def sweep_row(name: str, record: dict[str, Any] | None, summary: dict[str, Any] | None,
              study: dict[str, Any] | None, job: dict[str, str] | None, now: float) -> dict[str, Any]:
    """One sweep's status from what its storage, study and job queue hold (no I/O)."""
    settings = (record or {}).get("settings", {})
    row: dict[str, Any] = {"name": name, "state": "unknown", "trials_done": 0,
                           "trials_total": settings.get("num_trials"), "best_fid": None, "best_kid": None,
                           "wall_hours": None, "gpu_hours": None, "cpu_hours": None, "driver": None,
                           "job": job}
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
        rows.append(sweep_row(name, record, summary, study, jobs.get(name), now))
    return rows


def table(rows: list[dict[str, Any]], width: int = 100) -> str:
    """The rows as a table that fits ``width`` columns (the sweep names are shortened first)."""
    def number(value, digits):
        return "-" if value is None else f"{value:.{digits}f}"

    head = ("sweep", "state", "trials", "best FID", "best KID", "wall h", "GPU h", "CPU h")
    lines = [(r["name"], r["state"], f"{r['trials_done']}/{r['trials_total'] if r['trials_total'] else '?'}",
              number(r["best_fid"], 2), number(r["best_kid"], 4), number(r["wall_hours"], 2),
              number(r["gpu_hours"], 2), number(r["cpu_hours"], 2)) for r in rows]
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python sweeps/status.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--storage", help="where the sweeps ran, a folder or s3:// (default: FPA_STORAGE, else "
                                          "./sweeps_out)")
    parser.add_argument("--optuna-storage", help="the Optuna store of every sweep (default: the one each recorded)")
    parser.add_argument("--address", help="a Ray job server (http://HEAD:8265): its queued and running sweep jobs too")
    parser.add_argument("--json", action="store_true", help="print the sweeps as JSON")
    parser.add_argument("--cancel", metavar="NAME", help="stop the running or queued sweep NAME (it stays resumable)")
    args = parser.parse_args(argv)
    if storage.location_problem(args.storage):
        parser.error(f"--storage {storage.location_problem(args.storage)}")
    root = resolve_storage(args.storage)
    from sweeps.jobs import JobServerUnreachable

    try:
        rows = collect(root, args.optuna_storage, args.address)
    except JobServerUnreachable as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    if args.cancel:
        row = next((r for r in rows if r["name"] == args.cancel), None)
        if row is None:
            known = ", ".join(r["name"] for r in rows) or "no sweeps"
            parser.exit(2, f"{parser.prog}: error: no sweep named {args.cancel!r} in {root}"
                           f"{' or on ' + args.address if args.address else ''}; there are {known}\n")
        try:
            print(cancel(row, args.address))
        except ValueError as e:
            parser.exit(2, f"{parser.prog}: error: {e}\n")
        return 0
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    where = f"{root}" + (f" and {redact(args.address)}" if args.address else "")
    print(table(rows, shutil.get_terminal_size((100, 20)).columns) if rows else f"no sweeps in {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
