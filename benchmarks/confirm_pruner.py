"""A pruner confirmed on real trials: pruned sweeps against the same sweeps unpruned, seed by seed.

    python benchmarks/confirm_pruner.py --storage sweeps_out \\
        confirm-none-s0:confirm-margin-s0 confirm-none-s1:confirm-margin-s1 [--walls DIR] [--out FILE]

Each pair is UNPRUNED:PRUNED, two finished sweeps of the same configs (the same sampler seed, and few enough
trials that TPE is still drawing its random start-up ones), judged on the trials whose configs agree (all,
unless an arm was resumed: its sampler then draws other configs for the trials it had not asked). Per pair:
trial-steps and how many fewer, the trials' own time, the best trial of each and its KID and FID, whether the pruned arm kept the unpruned arm's best
(its state there) and its regret in units of the metric's noise std, each trial's steps, and how many of the
pruned arm's evaluations differ from the unpruned arm's at the same step (0 when seeded training is
deterministic: then the unpruned arm is the pruned arm's counterfactual). ``--walls DIR`` reads each sweep's
wall time from DIR/time-NAME.txt (``/usr/bin/time -f "%e s wall"``). Prints a Markdown table and the mean ±
std over pairs; ``--out`` writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from fpa_core.metrics.noise import DEMO_NOISE_STD



def trial_steps(summary: dict) -> int:
    return sum(t["steps"] for t in summary["trials"])


def best_trial(summary: dict) -> dict:
    return min((t for t in summary["trials"] if t["best_value"] is not None), key=lambda t: t["best_value"])


def differing_evaluations(full: dict, pruned: dict, metric: str) -> int:
    """The pruned arm's evaluations whose score differs from the unpruned arm's at the same trial and step."""
    count = 0
    for a, b in zip(full["trials"], pruned["trials"]):
        at = {e["step"]: e[metric] for e in a["evaluations"]}
        count += sum(e["step"] in at and abs(at[e["step"]] - e[metric]) > 1e-9 for e in b["evaluations"])
    return count


def compare(full: dict, pruned: dict) -> dict:
    """One pair of arms, judged on the trials that have the same config in both (all of them, unless one arm
    was resumed: a resumed sampler draws other configs); raises ValueError when the first trials differ."""
    same = [a["params"] == b["params"] for a, b in zip(full["trials"], pruned["trials"])]
    common = len(same) if all(same) else same.index(False)
    if common == 0:
        raise ValueError(f"{full['name']} and {pruned['name']} did not sweep the same configs: use the same --seed "
                         "and at most 10 trials (TPE's random start-up)")
    full, pruned = ({**s, "trials": s["trials"][:common]} for s in (full, pruned))
    metric = full["settings"]["metric"]
    winner, found = best_trial(full), best_trial(pruned)
    kept = next(t["state"] for t in pruned["trials"] if t["trial_id"] == winner["trial_id"])
    return {"unpruned": full["name"], "pruned": pruned["name"], "metric": metric, "trials": common,
            "trial_steps": [trial_steps(full), trial_steps(pruned)],
            "fewer_steps": trial_steps(full) / trial_steps(pruned),
            "trial_seconds": [sum(t["seconds"] for t in s["trials"]) for s in (full, pruned)],
            "best": [{"trial_id": t["trial_id"], metric: t["best_value"],
                      "fid": min(e["fid"] for e in t["evaluations"])} for t in (winner, found)],
            "unpruned_best_state": kept, "regret": (found["best_value"] - winner["best_value"]) / DEMO_NOISE_STD[metric],
            "steps": [t["steps"] for t in pruned["trials"]],
            "differing_evaluations": differing_evaluations(full, pruned, metric)}


def wall(walls: Path | None, name: str) -> float | None:
    path = walls / f"time-{name}.txt" if walls else None
    if not path or not path.exists():
        return None
    return next(float(line.split()[0]) for line in path.read_text().splitlines() if line.endswith(" s wall"))


def mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pairs", nargs="+", metavar="UNPRUNED:PRUNED")
    parser.add_argument("--storage", type=Path, default=Path("sweeps_out"))
    parser.add_argument("--walls", type=Path, help="a folder of time-NAME.txt files")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    rows = []
    for pair in args.pairs:
        names = pair.split(":")
        if len(names) != 2 or not all(names):
            parser.error(f"{pair!r}: expected UNPRUNED:PRUNED, two sweep names")
        summaries = []
        for name in names:
            path = args.storage / name / "summary.json"
            if not path.exists():
                parser.error(f"{path}: no such summary; is {name} a finished sweep in --storage {args.storage}?")
            summaries.append(json.loads(path.read_text()))
        try:
            row = compare(*summaries)
        except ValueError as e:
            parser.error(str(e))
        rows.append({**row, "wall_s": [wall(args.walls, n) for n in names]})

    def minutes(s):
        return f"{s / 60:.1f} min" if s is not None else "-"

    print("| pair | pruner | trials | trial-steps | fewer | wall | trial time | best | the unpruned best | steps per trial |")
    print("|---|---|---:|---:|---:|---:|---:|---|---|---|")
    for r in rows:
        m = r["metric"]
        (full_best, found) = r["best"]
        print(f"| {r['unpruned']} | none | {r['trials']} | {r['trial_steps'][0]:,} | 1.00x | {minutes(r['wall_s'][0])} | "
              f"{minutes(r['trial_seconds'][0])} | {full_best['trial_id']}: {m.upper()} {full_best[m]:.4f}, FID "
              f"{full_best['fid']:.1f} | | all {max(r['steps']):,} |")
        print(f"| {r['pruned']} | pruned | {r['trials']} | {r['trial_steps'][1]:,} | {r['fewer_steps']:.2f}x | "
              f"{minutes(r['wall_s'][1])} | {minutes(r['trial_seconds'][1])} | {found['trial_id']}: {m.upper()} "
              f"{found[m]:.4f}, FID {found['fid']:.1f} | {r['unpruned_best_state'].lower()}, regret "
              f"{r['regret']:.2f} noise std | {', '.join(f'{s:,}' for s in r['steps'])} |")
    print(f"\n{len(rows)} pair(s): trial-steps {mean_std([r['fewer_steps'] for r in rows])}x fewer, regret "
          f"{mean_std([r['regret'] for r in rows])} noise std, the unpruned best kept in "
          f"{sum(r['unpruned_best_state'] != 'PRUNED' for r in rows)}/{len(rows)}, evaluations that differ "
          f"between the arms: {sum(r['differing_evaluations'] for r in rows)}")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
