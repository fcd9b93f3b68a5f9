"""How early can a trial be judged? The rank correlation of each trial's score at step s with its final best.

    python benchmarks/rank_correlation.py sweeps_out/A/summary.json sweeps_out/B/summary.json ... \\
        [--write-curves benchmarks/data/curves-demo.json]

Reads finished sweeps' summary.json (unpruned: every trial trained to its budget, so that its final best is
known), pools their complete trials (each config once: seeded training is deterministic), and for every evaluated step s and each metric (FID, KID) measures
Spearman's rho between the trials' score at s and their final best (the lowest score of the whole run), twice:
for the score evaluated at s, and for the best so far at s (what the pruners see). Each rho comes with a 90%
bootstrap interval over trials. ``winner in top third`` counts the sweeps whose final best trial is inside the
best third of its own sweep at s: where a successive-halving rung at s would have kept it. A rung is safe at the
first step where rho is high and the winner is always kept.

``--write-curves`` writes the curves read (params and evaluations, the trials renamed by sweep) as one
summary-shaped file that ``benchmarks/pruner_table.py --source`` replays. Writes results.json under --out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

METRICS = ("fid", "kid")


def complete_trials(summary: dict) -> list[dict]:
    """The trials trained to the sweep's budget with an evaluation at each step of it."""
    trials = [t for t in summary["trials"] if t.get("state") == "COMPLETE" and t.get("evaluations")]
    if not trials:
        return []
    last = max(t["evaluations"][-1]["step"] for t in trials)
    return [t for t in trials if t["evaluations"][-1]["step"] == last]


def unique_configs(trials: list[dict]) -> list[dict]:
    """Each config once: seeded training is deterministic, so a config trained again (the base config that
    every sweep of a file starts with, or a resumed sweep's replayed draws) is the same curve again."""
    seen, unique = [], []
    for t in trials:
        if t["params"] not in seen:
            seen.append(t["params"])
            unique.append(t)
    return unique


def at_step(trial: dict, metric: str, step: int) -> tuple[float, float]:
    """(the score evaluated at ``step``, the best so far at it)."""
    seen = [e[metric] for e in trial["evaluations"] if e["step"] <= step and e.get(metric) is not None]
    now = next(e[metric] for e in trial["evaluations"] if e["step"] == step)
    return now, min(seen)


def final_best(trial: dict, metric: str) -> float:
    return min(e[metric] for e in trial["evaluations"] if e.get(metric) is not None)


def rho_with_interval(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, draws: int) -> tuple[float, float, float]:
    """Spearman's rho of x and y, with the 5th and 95th percentiles of its bootstrap over pairs."""
    rho = float(spearmanr(x, y).statistic)
    samples = []
    for _ in range(draws):
        pick = rng.integers(0, len(x), len(x))
        if len(set(pick)) > 2:
            samples.append(spearmanr(x[pick], y[pick]).statistic)
    low, high = np.nanpercentile(samples, [5, 95])
    return rho, float(low), float(high)


def table(sweeps: dict[str, list[dict]], metric: str, draws: int, seed: int) -> list[dict]:
    """One row per evaluated step: rho of the score and of the best so far with the final best, and how many
    sweeps' winners a top-third cut at that step keeps."""
    trials = unique_configs([t for ts in sweeps.values() for t in ts])
    steps = sorted({e["step"] for e in trials[0]["evaluations"]}.intersection(
        *({e["step"] for e in t["evaluations"]} for t in trials)))
    final = np.array([final_best(t, metric) for t in trials])
    rng = np.random.default_rng(seed)
    rows = []
    for step in steps:
        now, best = map(np.array, zip(*(at_step(t, metric, step) for t in trials)))
        kept = 0
        for ts in sweeps.values():
            winner = min(range(len(ts)), key=lambda i: final_best(ts[i], metric))
            ranks = sorted(range(len(ts)), key=lambda i: at_step(ts[i], metric, step)[1])
            kept += ranks.index(winner) < max(len(ts) // 3, 1)
        rows.append({"step": step, "trials": len(trials),
                     "rho_score": rho_with_interval(now, final, rng, draws),
                     "rho_best_so_far": rho_with_interval(best, final, rng, draws),
                     "winner_kept": kept, "sweeps": len(sweeps)})
    return rows


def merged_curves(sweeps: dict[str, list[dict]]) -> dict:
    """The curves read, as one summary-shaped file for ``pruner_table.py --source``."""
    planned = max(t["evaluations"][-1]["step"] for ts in sweeps.values() for t in ts)
    return {"name": "+".join(sweeps), "best": {"config": {"steps": planned}},
            "trials": [{"trial_id": f"{name}/{t['trial_id']}", "state": t["state"], "params": t["params"],
                        "steps": t.get("steps"), "evaluations": t["evaluations"]}
                       for name, ts in sweeps.items() for t in ts]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("summaries", nargs="+", type=Path, help="finished, unpruned sweeps' summary.json")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap draws per rho")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write-curves", type=Path)
    parser.add_argument("--out", type=Path, default=Path("runs/rank-correlation"))
    args = parser.parse_args()
    sweeps = {}
    for path in args.summaries:
        if not path.is_file():
            parser.error(f"{path}: no such file; pass finished sweeps' summary.json (sweeps_out/NAME/summary.json)")
        summary = json.loads(path.read_text())
        trials = unique_configs(complete_trials(summary))
        if len(trials) < 3:
            parser.error(f"{path}: {len(trials)} trials trained to the budget; a rank needs 3 or more "
                         "(run the sweep with --pruner none)")
        sweeps[summary["name"]] = trials
    results = {metric: table(sweeps, metric, args.bootstrap, args.seed) for metric in METRICS}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"sweeps": list(sweeps), "results": results}, indent=1))
    if args.write_curves:
        args.write_curves.parent.mkdir(parents=True, exist_ok=True)
        args.write_curves.write_text(json.dumps(merged_curves(sweeps), indent=1) + "\n")
    n = len(unique_configs([t for ts in sweeps.values() for t in ts]))
    print(f"{n} configs trained to their budget (each once), from {len(sweeps)} sweeps ({', '.join(sweeps)}); "
          f"90% bootstrap intervals over them\n")
    for metric, rows in results.items():
        print(f"| {metric.upper()} at step | rho, score at s | rho, best so far at s | winner in top third |")
        print("|---:|---:|---:|---:|")
        for r in rows:
            cells = [f"{r[k][0]:.2f} [{r[k][1]:.2f}, {r[k][2]:.2f}]" for k in ("rho_score", "rho_best_so_far")]
            print(f"| {r['step']:,} | {cells[0]} | {cells[1]} | {r['winner_kept']}/{r['sweeps']} |")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
