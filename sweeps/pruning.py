"""Pruning: which trials stop early, decided by Optuna on their periodic evaluations. The one place to change it.

The pruners take the value of the sweep's metric (FID or KID) a trial reports at each evaluation, at the
training step it was measured; a trial is never pruned at its last step.
"""

from __future__ import annotations

import optuna

PRUNERS = ("median", "percentile", "successive-halving", "hyperband", "none")


def make_pruner(name: str, warmup: int, fid_every: int, max_steps: int) -> optuna.pruners.BasePruner:
    """An Optuna pruner over the values reported at training steps (every ``fid_every``): the first ``warmup``
    evaluations of a trial are never pruned; the median and percentile pruners also wait for two
    finished trials to compare with."""
    first_prunable = (warmup + 1) * fid_every  # the step of the first evaluation that may stop a trial
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=first_prunable - 1)
    if name == "percentile":
        return optuna.pruners.PercentilePruner(25.0, n_startup_trials=2, n_warmup_steps=first_prunable - 1)
    if name == "successive-halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=first_prunable, reduction_factor=3)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=first_prunable, max_resource=max(max_steps, first_prunable),
                                              reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"unknown pruner {name!r}: choose one of {', '.join(PRUNERS)}")
