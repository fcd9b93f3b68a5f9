"""How busy a finished sweep kept its slots: from Ray Tune's results of each trial, the time each trial ran,
the time slots sat idle between trials, and the start-up before the first trial.

    .venv/bin/python benchmarks/slot_use.py sweeps_out/<name> [--slots 2]

A trial runs from the moment its function started (its first result's timestamp minus Ray's time_total_s)
to its last result (its final evaluation; what follows is the run's summary and MLflow's last writes). The
sweep's span runs from sweep.json (written by the driver before Ray starts) to the last trial's end:

    idle = slots x (span after the first trial started) - the trials' running time
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def trial_spans(folder: Path) -> dict[str, tuple[float, float]]:
    spans = {}
    for results in sorted(folder.glob("*/result.json")):
        rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
        if rows:
            spans[results.parent.name] = (rows[0]["timestamp"] - rows[0]["time_total_s"], rows[-1]["timestamp"])
    return spans


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path, help="the sweep's folder, <storage>/<name>")
    p.add_argument("--slots", type=int, default=2, help="trials that could run at once")
    args = p.parse_args()
    spans = trial_spans(args.folder)
    if not spans:
        raise SystemExit(f"{args.folder}: no Ray trial results (*/result.json) in this folder")
    began = (args.folder / "sweep.json").stat().st_mtime
    first, last = min(s for s, _ in spans.values()), max(e for _, e in spans.values())
    busy = sum(e - s for s, e in spans.values())
    capacity = args.slots * (last - first)
    print(f"{len(spans)} trials, {args.slots} slots; start-up before the first trial: {first - began:.0f} s; "
          f"from the first trial's start to the last one's end: {last - first:.0f} s")
    print(f"trials running: {busy:.0f} slot-s of {capacity:.0f}; idle: {capacity - busy:.0f} slot-s "
          f"({100 * (capacity - busy) / capacity:.1f}%)")


if __name__ == "__main__":
    main()
