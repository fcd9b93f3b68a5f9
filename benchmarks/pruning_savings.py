"""Does pruning pay? The same configs, drawn once, swept once per pruner: none, median, hyperband, and
successive halving.

    python benchmarks/pruning_savings.py [--configs 8] [--seed 0] [--steps 2000 --every 500]
                                         [--pruners none,median,hyperband,successive-halving] [--out runs/pruning]

The configs come from the digits space (sweeps/configs/digits.yaml) at the demo's size (--profile demo: 16 x
16, 2,000 steps, KID and FID every 500 steps on 200 samples, calibrated Inception; --steps and --every change
the budget and the evaluations' spacing), drawn once by Optuna's
seeded RandomSampler and enqueued in the same order into each sweep's study, so that the three sweeps train
exactly the same list. Each sweep runs on a local Ray, two trials at a time, through the real driver
(sweeps.driver.run_sweep), on KID as the demo does. Writes, and prints, a table: trial-steps trained, wall
time, and the best KID and FID each sweep found, with the unpruned sweep's for comparison; also
``results.json`` under --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PRUNERS = ("none", "median", "hyperband", "successive-halving")


def draw(spec, count: int, seed: int) -> list[dict]:
    """``count`` configs from the space, drawn by a seeded RandomSampler (in memory, not a sweep's study)."""
    import optuna

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return [spec.sample(study.ask()) for _ in range(count)]


def sweep(spec, configs: list[dict], pruner: str, out: Path) -> dict:
    import optuna

    from sweeps.driver import run_sweep
    from sweeps.study import open_store, open_study
    from sweeps.sweep import new_settings

    settings = new_settings(f"pruning-{pruner}", storage=str(out / "storage"),
                            tracking_uri=f"sqlite:///{out / 'mlflow.db'}", num_trials=len(configs), pruner=pruner,
                            warmup=0, max_concurrent=2, metric="kid")
    spec = spec.with_fixed({"fid": {"metric": "kid"}})
    study = open_study(spec, settings, spec.trial_config({}), open_store(settings))
    for params in configs:  # the same list, in the same order, for every pruner
        study.enqueue_trial(params)
    assert len(study.get_trials(states=(optuna.trial.TrialState.WAITING,))) == len(configs)
    start = time.perf_counter()
    summary = run_sweep(spec, settings)
    wall = time.perf_counter() - start
    best = summary["best"] or {}
    return {"pruner": pruner, "trial_steps": sum(t["steps"] for t in summary["trials"]), "wall_s": wall,
            "best_kid": best.get("kid"), "best_fid": best.get("fid"), "best_trial": best.get("trial_id"),
            "states": [t["state"] for t in summary["trials"]], "steps": [t["steps"] for t in summary["trials"]],
            "params": [t["params"] for t in summary["trials"]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=2000, help="each trial's budget (the demo's: 2000)")
    parser.add_argument("--every", type=int, default=500, help="steps between evaluations (the demo's: 500)")
    parser.add_argument("--pruners", default=",".join(PRUNERS),
                        help="comma-separated, the first the baseline (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("runs/pruning"))
    args = parser.parse_args()
    from sweeps.pruning import PRUNERS as OFFERED

    pruners = args.pruners.split(",")
    if unknown := [p for p in pruners if p not in OFFERED]:
        parser.error(f"--pruners: unknown {', '.join(unknown)}; choose from {', '.join(OFFERED)}")
    from sweeps.sweep_file import load_sweep

    spec = dataclasses.replace(load_sweep("digits", "demo"), first=None)  # the drawn list only
    spec = spec.with_fixed({"steps": args.steps, "fid.every": args.every, "checkpoint.every": args.every})
    configs = draw(spec, args.configs, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for pruner in pruners:
        rows.append(sweep(spec, configs, pruner, args.out))
        (args.out / "results.json").write_text(json.dumps({"configs": configs, "sweeps": rows}, indent=2))
    full = rows[0]  # the baseline: "none" by default
    print(f"\n{len(configs)} configs of the digits space (RandomSampler seed {args.seed}), {args.steps} steps, "
          f"evaluated every {args.every}\n")
    print(f"| pruner | trial-steps | fewer than {full['pruner']} | wall time | best KID | best FID | states |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        states = ", ".join(f"{r['states'].count(s)} {s.lower()}" for s in ("COMPLETE", "PRUNED", "ERROR")
                           if r["states"].count(s))
        print(f"| {r['pruner']} | {r['trial_steps']:,} | {full['trial_steps'] / r['trial_steps']:.2f}x | "
              f"{r['wall_s'] / 60:.1f} min | {r['best_kid']:.4f} | {r['best_fid']:.2f} | {states} |")


if __name__ == "__main__":
    main()
