"""Pruning: which trials stop early, decided by Optuna on their periodic evaluations. The one place to change it.

The pruners see each trial's best value so far of the sweep's metric (FID or KID) at each evaluation, at the
training step it was measured, so that one noisy evaluation cannot stop a trial that did better before;
``patience`` waits that many evaluations without a new best (Optuna's PatientPruner). A trial is never
pruned at its last step.
"""

from __future__ import annotations

import statistics

import optuna

PRUNERS = ("median", "percentile", "successive-halving", "hyperband", "wilcoxon", "none")


def make_pruner(name: str, warmup: int, fid_every: int, max_steps: int, patience: int | None = None,
                reduction_factor: int = 3) -> optuna.pruners.BasePruner:
    """An Optuna pruner over the values reported at training steps (every ``fid_every``): the first ``warmup``
    evaluations of a trial are never pruned; the median and percentile pruners also wait for two
    finished trials to compare with. ``wilcoxon`` compares a trial's curve with the best trial's, step by
    step, and stops it when a Wilcoxon signed-rank test says it is worse (p < 0.1): it decides on several
    evaluations at once, never one. ``patience``: prune only after that many evaluations without a new best.
    ``reduction_factor``: successive halving's and Hyperband's; 1 / it of a rung's trials go on."""
    pruner = _pruner(name, warmup, fid_every, max_steps, reduction_factor)
    if patience is None or name == "none":
        return pruner
    return PatientPruner(pruner, patience)


class PatientPruner(optuna.pruners.BasePruner):
    """Patience for best-so-far values: ``wrapped`` decides only once the trial's last ``patience`` evaluations
    brought no new best. (Optuna's PatientPruner waits for the recent values to be worse than the earlier ones,
    which a best so far never is.)"""

    def __init__(self, wrapped: optuna.pruners.BasePruner, patience: int):
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience: expected an integer >= 1, got {patience!r}")
        self.wrapped, self.patience = wrapped, patience

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        values = [trial.intermediate_values[step] for step in sorted(trial.intermediate_values)]
        if len(values) <= self.patience or values[-1] < values[-1 - self.patience]:
            return False
        return self.wrapped.prune(study, trial)


def _pruner(name: str, warmup: int, fid_every: int, max_steps: int,
            reduction_factor: int) -> optuna.pruners.BasePruner:
    first_prunable = (warmup + 1) * fid_every  # the step of the first evaluation that may stop a trial
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=first_prunable - 1)
    if name == "percentile":
        return optuna.pruners.PercentilePruner(25.0, n_startup_trials=2, n_warmup_steps=first_prunable - 1)
    if name == "successive-halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=first_prunable,
                                                      reduction_factor=reduction_factor)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=first_prunable, max_resource=max(max_steps, first_prunable),
                                              reduction_factor=reduction_factor)
    if name == "wilcoxon":
        return optuna.pruners.WilcoxonPruner(p_threshold=0.1, n_startup_steps=warmup)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"unknown pruner {name!r}: choose one of {', '.join(PRUNERS)}")


def explain(others: list[float], step: int, value: float) -> str:
    """What a pruning decision at ``step`` compared: the trial's best so far against the other trials' best so
    far at that step (``others``, sorted: how many, their median and best)."""
    if not others:
        return f"best so far {value:.4g} at step {step}; no other trial has reached it"
    median = statistics.median(others)
    return (f"best so far {value:.4g} at step {step} against {len(others)} other trial(s) there: median "
            f"{median:.4g}, best {others[0]:.4g}")
