"""Every sweep in a storage (and on a cluster's job queue), at a glance; cancel one.

    fpa-status                               # the sweeps in --storage (FPA_STORAGE, ./sweeps_out)
    fpa-status --address http://HEAD:8265    # and the cluster's queued and running sweep jobs
    fpa-status --json                        # the same, machine-readable
    fpa-status --cancel NAME [--address ...] # stop a running or queued sweep; it stays resumable

A sweep is queued (its Ray Job waits for a sweep slot), running (its study names a live driver), interrupted
(no driver and no summary: `launch.py --resume NAME` continues it) or finished (its summary.json). Each row
gives its trials ended of all, its best FID and KID so far, its drivers' wall time and what its trials used,
in GPU-hours (CPU-hours where they take no GPU). A sweep's study is read from the Optuna store its sweep.json
names, unless --optuna-storage names another.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys

from fpa_core import storage
from sweeps.overview import cancel, collect, table
from sweeps.sweep import redact, resolve_storage


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fpa-status", description=__doc__,
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
