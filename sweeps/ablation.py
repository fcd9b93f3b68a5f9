"""An ablation grid's results (``grid:`` and ``seeds:`` in a sweep file): per cell, the FID and KID of its
trials' last evaluation, mean and standard deviation over the seeds, as a table and a plot.

The last evaluation, not the best: every cell trains to the same step budget, and picking each seed's best
evaluation would favour the cells whose scores are noisiest. Nothing here talks to Ray, Optuna or MLflow.
"""

from __future__ import annotations

import io
import statistics
from typing import Any

from fpa_core.config import flatten
from sweeps.space import SweepSpec

SCORES = ("fid", "kid")


def results(spec: SweepSpec, trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per cell: its axis and value, the seeds that finished, FID and KID mean and std over them."""
    rows = []
    for name, overrides in spec.cells():
        ran = [t for t in trials if {k: v for k, v in t["params"].items() if k != "seed"} == overrides]
        finished = [t for t in ran if t["state"] == "COMPLETE" and t["evaluations"]]
        last = [t["evaluations"][-1] for t in finished]
        axis, value = next(iter(overrides.items()), ("centre", None))
        row = {"cell": name, "axis": axis, "value": value, "seeds": sorted(t["params"]["seed"] for t in finished),
               "failed": len(ran) - len(finished), "step": max((e["step"] for e in last), default=None)}
        for score in SCORES:
            values = [e[score] for e in last if e.get(score) is not None]
            row[f"{score}_mean"] = statistics.fmean(values) if values else None
            row[f"{score}_std"] = statistics.stdev(values) if len(values) > 1 else None
        rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]], centre: dict[str, Any]) -> str:
    """The table: one row per cell, the centre's values of every axis named above it."""
    described = ", ".join(f"{axis} = {value}" for axis, value in centre.items())
    lines = [f"Centre: {described}. Last evaluation of each trial; mean ± std over seeds.", "",
             "| cell | seeds | step | FID | KID |", "|---|---:|---:|---:|---:|"]
    for row in rows:
        seeds = f"{len(row['seeds'])}" + (f" ({row['failed']} failed)" if row["failed"] else "")
        step = "-" if row["step"] is None else str(row["step"])
        lines.append(f"| {row['cell']} | {seeds} | {step} | {_mean_std(row, 'fid', 2)} | {_mean_std(row, 'kid', 4)} |")
    return "\n".join(lines) + "\n"


def _mean_std(row: dict[str, Any], score: str, digits: int) -> str:
    mean, std = row[f"{score}_mean"], row[f"{score}_std"]
    if mean is None:
        return "-"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if std is not None else f"{mean:.{digits}f}"


def plot(rows: list[dict[str, Any]], centre: dict[str, Any], title: str) -> bytes:
    """A PNG: one column per axis (the centre's value included), FID above KID, mean ± std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes = list(centre)
    base = next(r for r in rows if r["axis"] == "centre")
    fig, grid = plt.subplots(2, max(1, len(axes)), figsize=(3.2 * max(1, len(axes)), 5.5), dpi=100, squeeze=False)
    for column, axis in enumerate(axes):
        cells = [(centre[axis], base)] + [(r["value"], r) for r in rows if r["axis"] == axis]
        labels = [f"{value}{' (centre)' if row is base else ''}" for value, row in cells]
        for line, score in enumerate(SCORES):
            ax = grid[line][column]
            means = [row[f"{score}_mean"] if row[f"{score}_mean"] is not None else float("nan") for _, row in cells]
            stds = [row[f"{score}_std"] or 0.0 for _, row in cells]
            ax.errorbar(range(len(cells)), means, yerr=stds, fmt="o", capsize=4)
            ax.set_xticks(range(len(cells)), labels, rotation=20, fontsize=8)
            ax.set_title(axis if line == 0 else "", fontsize=9)
            ax.set_ylabel(score.upper())
            ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def centre_values(spec: SweepSpec) -> dict[str, Any]:
    """The centre cell's value of every axis of the grid."""
    config = flatten(spec.trial_config({}))
    return {axis: config[axis] for axis in spec.grid or {}}
