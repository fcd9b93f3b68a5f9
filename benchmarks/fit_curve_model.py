"""Fit the curve model of ``--simulate model`` to recorded sweeps; writes sweeps/configs/curve-model.json.

    .venv/bin/python benchmarks/fit_curve_model.py --storage sweeps_out --sweep digits-20261203-145037 \
        [--sweep MORE] [--out sweeps/configs/curve-model.json]

Per score, each recorded trial with at least three evaluations is fitted (least squares on the logarithms) by

    falling (FID, KID):           v(f) = level * (1 + ratio * exp(-f / tau))
    rising (precision, recall):   v(f) = level * (1 - ratio * exp(-f / tau))

with f the fraction of the trial's planned training done: one ratio and one tau for all of them (a few full curves
pin one shape down, not one per curve), a level per trial. A trial with fewer evaluations (pruned early) gets its
level from its last evaluation and that shape. The model keeps the mean and std of log level (every trial), the
shape's log ratio and log tau with a spread of 0.25 (so that curves cross), the relative noise of each
score (FID 0.63 / 31.72 and KID 0.00050 / 0.00494: one checkpoint over 5 latent seeds, BENCHMARKS.md "Metric
noise"; precision and recall sqrt(p (1 - p) / n) / p at p = 0.6 and the 200 images of an evaluation), and KID's
std over subsets as a share of KID (the median recorded). docs/simulation.md shows the fit.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares

from sweeps.simulation import MODEL_FILE, RISING, planned_steps
from sweeps.sweep import read_summary, resolve_storage

METRICS = ("fid", "kid", "precision", "recall")
NOISE = {"fid": 0.63 / 31.72, "kid": 0.00050 / 0.00494, "precision": math.sqrt(0.6 * 0.4 / 200) / 0.6,
         "recall": math.sqrt(0.6 * 0.4 / 200) / 0.6}
MIN_STD = 0.25


def curve(params: np.ndarray, fraction: np.ndarray, rising: bool) -> np.ndarray:
    level, ratio, tau = np.exp(params)
    decay = ratio * np.exp(-fraction / tau)
    return level * (1 - decay) if rising else level * (1 + decay)


def fit_shape(curves: list[tuple[np.ndarray, np.ndarray]], rising: bool) -> tuple[float, float, list[float]]:
    """One shape (log ratio, log tau) for every curve, and each curve's own log level: least squares on the
    logarithms. Few full curves pin one shape down; a ratio and a tau per curve, they do not."""
    def residuals(p: np.ndarray) -> np.ndarray:
        return np.concatenate([np.log(np.clip(curve(np.array([level, p[0], p[1]]), f, rising), 1e-9, None)) - np.log(v)
                               for level, (f, v) in zip(p[2:], curves)])

    start = [math.log(0.9 if rising else 2.0), math.log(0.2)] + [math.log(v.max() if rising else v.min())
                                                                 for _, v in curves]
    low, high = [-6, math.log(0.01)] + [-20] * len(curves), [8, math.log(10)] + [10] * len(curves)
    result = least_squares(residuals, start, bounds=(low, high))
    return float(result.x[0]), float(result.x[1]), [float(x) for x in result.x[2:]]


def fit(summaries: list[dict]) -> dict:
    trials = [(t, planned_steps(s)) for s in summaries for t in s["trials"] if t["evaluations"]]
    model = {"source": [s["name"] for s in summaries], "trials": len(trials), "metrics": {}, "noise": NOISE}
    for metric in METRICS:
        rising, full, short = metric in RISING, [], []
        for trial, planned in trials:
            points = [(e["step"] / planned, e[metric]) for e in trial["evaluations"] if e.get(metric)]
            if len(points) >= 3:
                full.append(tuple(map(np.asarray, zip(*points))))
            elif points:
                short.append(points[-1])
        log_ratio, log_tau, levels = fit_shape(full, rising)
        ratio, tau = math.exp(log_ratio), math.exp(log_tau)
        for f, v in short:  # the level a short curve would have reached with the fitted shape
            decay = ratio * math.exp(-f / tau)
            levels.append(math.log(v / (1 + decay)) if not rising else
                          math.log(v / (1 - decay)) if decay < 1 else math.log(v))
        model["metrics"][metric] = {
            "log_level": [statistics.fmean(levels), max(MIN_STD, statistics.pstdev(levels))],
            "log_ratio": [log_ratio, MIN_STD], "log_tau": [log_tau, MIN_STD],
            "fitted_trials": len(full), "short_trials": len(short)}
    ratios = [e["kid_std"] / e["kid"] for t, _ in trials for e in t["evaluations"] if e.get("kid") and e.get("kid_std")]
    model["kid_std_ratio"] = statistics.median(ratios)
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--storage", help="where the sweeps ran (default: FPA_STORAGE, else ./sweeps_out)")
    parser.add_argument("--sweep", action="append", required=True, help="a finished sweep to fit (repeatable)")
    parser.add_argument("--out", default=str(MODEL_FILE), help=f"where the model goes (default {MODEL_FILE})")
    args = parser.parse_args(argv)
    root = resolve_storage(args.storage)
    model = fit([read_summary(root, name) for name in args.sweep])
    Path(args.out).write_text(json.dumps(model, indent=2) + "\n")
    for metric, m in model["metrics"].items():
        print(f"{metric}: level {math.exp(m['log_level'][0]):.4g} (log std {m['log_level'][1]:.2f}), ratio "
              f"{math.exp(m['log_ratio'][0]):.3g}, tau {math.exp(m['log_tau'][0]):.3g} of training; "
              f"{m['fitted_trials']} fitted, {m['short_trials']} short")
    print(f"wrote {args.out} ({model['trials']} trials of {', '.join(model['source'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
