"""The bytes a finished sweep stores, before and after retention (``--keep-full K``), on a copy of its folder.

    .venv/bin/python benchmarks/retention_bytes.py --sweep digits-20261203-145037 [--storage sweeps_out] [--keep-full 3]

Copies the sweep's folder (a sweep run before retention keeps every trial whole), applies the rule a sweep now
applies as its trials end (``sweeps.retention``: the best K by the sweep's metric keep every checkpoint, the
others their generator), and prints the bytes of the copy before and after, and per trial.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from fpa_core import storage
from fpa_core.train.config import build_config
from sweeps.retention import Retention
from sweeps.sweep import read_summary, resolve_storage
from sweeps.trials import TrialRecord


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep", required=True)
    parser.add_argument("--storage", help="where the sweep ran (default: FPA_STORAGE, else ./sweeps_out)")
    parser.add_argument("--keep-full", type=int, default=3)
    args = parser.parse_args(argv)
    root = resolve_storage(args.storage)
    summary = read_summary(root, args.sweep)
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch, args.sweep)
        shutil.copytree(Path(root, args.sweep), copy)
        before = storage.size(str(copy))
        records = []
        for t in summary["trials"]:
            record = TrialRecord(t["trial_id"], t["optuna_trial"], t["run_id"], t["params"], build_config({}),
                                 summary["metric"], state=t["state"])
            record.evaluations = t["evaluations"]
            records.append(record)
        Retention(str(copy), args.keep_full).finish(records)
        after = storage.size(str(copy))
        for record in records:
            size = storage.size(str(copy / "trials" / record.trial_id))
            print(f"{record.trial_id} {record.state:8s} {summary['metric']} {record.best_value!s:24s} "
                  f"{'generator' if record.trimmed else 'full':9s} {size / 1e6:8.1f} MB")
    print(f"{args.sweep}: {before / 1e6:.1f} MB before, {after / 1e6:.1f} MB after retention (--keep-full "
          f"{args.keep_full}): {before / max(after, 1):.2f}x less")
    return 0


if __name__ == "__main__":
    sys.exit(main())
