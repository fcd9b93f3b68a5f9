"""Pruning: which trials stop early, decided by Optuna on their periodic evaluations. The one place to change it.

The pruners see each trial's best value so far of the sweep's metric (FID or KID) at each evaluation, at the
training step it was measured, so that one noisy evaluation cannot stop a trial that did better before;
``patience`` waits that many evaluations without a new best (Optuna's PatientPruner). A trial is never
pruned at its last step. ``margin-halving`` is successive halving that knows the evaluations' noise: it stops a
trial at a rung only when it trails the rung's cut by more than the noise of that comparison (KID sweeps).
"""

from __future__ import annotations

import math
import statistics

import optuna

from sweeps.overview import PROGRESS

PRUNERS = ("median", "percentile", "successive-halving", "margin-halving", "hyperband", "wilcoxon", "none")
NEEDS_KID = ("margin-halving",)  # pruners that read each evaluation's own std, which KID has and FID has not
MARGIN_Z = 0.5  # margin-halving's margin in std of the difference, chosen from the pruner table (BENCHMARKS.md)


def pruner_defaults(metric: str, pruner: str | None = None) -> tuple[str, int]:
    """The pruner and warm-up of a sweep whose flags and file name neither: on KID, whose std it needs,
    margin-halving with no warm-up, the pruner table's choice (BENCHMARKS.md, "Choosing the pruner"); on FID the
    median pruner after one evaluation. ``pruner``: one already chosen, whose default warm-up is wanted."""
    pruner = pruner or ("margin-halving" if metric == "kid" else "median")
    return pruner, 0 if pruner == "margin-halving" else 1


def make_pruner(name: str, warmup: int, fid_every: int, max_steps: int, patience: int | None = None,
                reduction_factor: int = 3, z: float | None = None) -> optuna.pruners.BasePruner:
    """An Optuna pruner over the values reported at training steps (every ``fid_every``): the first ``warmup``
    evaluations of a trial are never pruned; the median and percentile pruners also wait for two
    finished trials to compare with. ``wilcoxon`` compares a trial's curve with the best trial's, step by
    step, and stops it when a Wilcoxon signed-rank test says it is worse (p < 0.1): it decides on several
    evaluations at once, never one. ``patience``: prune only after that many evaluations without a new best.
    ``reduction_factor``: successive halving's and Hyperband's; 1 / it of a rung's trials go on. ``z``:
    margin-halving's margin, in std of the difference (default ``MARGIN_Z``)."""
    pruner = _pruner(name, warmup, fid_every, max_steps, reduction_factor, MARGIN_Z if z is None else z)
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


def _pruner(name: str, warmup: int, fid_every: int, max_steps: int, reduction_factor: int,
            z: float) -> optuna.pruners.BasePruner:
    first_prunable = (warmup + 1) * fid_every  # the step of the first evaluation that may stop a trial
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=first_prunable - 1)
    if name == "percentile":
        return optuna.pruners.PercentilePruner(25.0, n_startup_trials=2, n_warmup_steps=first_prunable - 1)
    if name == "successive-halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=first_prunable,
                                                      reduction_factor=reduction_factor)
    if name == "margin-halving":
        return MarginHalvingPruner(min_resource=first_prunable, reduction_factor=reduction_factor, z=z)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=first_prunable, max_resource=max(max_steps, first_prunable),
                                              reduction_factor=reduction_factor)
    if name == "wilcoxon":
        return optuna.pruners.WilcoxonPruner(p_threshold=0.1, n_startup_steps=warmup)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"unknown pruner {name!r}: choose one of {', '.join(PRUNERS)}")


class MarginHalvingPruner(optuna.pruners.BasePruner):
    """Asynchronous successive halving (ASHA, as Optuna's SuccessiveHalvingPruner) whose cut knows the noise.

    Rung k is the first evaluation at or after step ``min_resource * reduction_factor**k``. There a trial's value
    (its best so far) competes with every trial's value at that rung: the best 1 / ``reduction_factor`` of them
    go on, and a trial outside them is stopped only when it trails the worst of them by more than ``z`` std of
    the difference, each evaluation's std its KID's own over subsets (``kid_std``, in the trial's ``fpa.progress``
    attribute). So a trial within noise of the cut goes on: one noisy evaluation does not decide."""

    def __init__(self, min_resource: int, reduction_factor: int = 3, z: float = MARGIN_Z):
        if min_resource < 1 or reduction_factor < 2:
            raise ValueError(f"margin-halving: min_resource >= 1 and reduction_factor >= 2, got {min_resource}, "
                             f"{reduction_factor}")
        self.min_resource, self.reduction_factor, self.z = min_resource, reduction_factor, z

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        steps = sorted(trial.intermediate_values)
        if not steps or steps[-1] < self.min_resource:
            return False
        before = steps[-2] if len(steps) > 1 else 0
        rung = self.min_resource
        while rung <= steps[-1]:
            if before < rung:  # this report is the trial's first at this rung: decide there
                others = study.get_trials(deepcopy=False)
                if self._trails(trial, others, rung):
                    return True
            rung *= self.reduction_factor
        return False

    def _trails(self, trial: optuna.trial.FrozenTrial, trials: list[optuna.trial.FrozenTrial], rung: int) -> bool:
        mine = _at_rung(trial, rung)
        if mine is None:
            return False
        competing = sorted([v for t in trials if t.number != trial.number and (v := _at_rung(t, rung))] + [mine])
        cut = competing[max(len(competing) // self.reduction_factor, 1) - 1]  # the worst that goes on
        return mine[0] > cut[0] + self.z * math.hypot(mine[1], cut[1])


def _at_rung(trial: optuna.trial.FrozenTrial, rung: int) -> tuple[float, float] | None:
    """(value, its evaluation's KID std) at the trial's first report at or after ``rung``; None before it."""
    step = next((s for s in sorted(trial.intermediate_values) if s >= rung), None)
    if step is None or not math.isfinite(trial.intermediate_values[step]):
        return None
    evaluations = trial.user_attrs.get(PROGRESS, {}).get("evaluations", [])
    std = next((e.get("kid_std") for e in evaluations if e["step"] == step), None)
    return trial.intermediate_values[step], float(std or 0.0)


def explain(others: list[float], step: int, value: float) -> str:
    """What a pruning decision at ``step`` compared: the trial's best so far against the other trials' best so
    far at that step (``others``, sorted: how many, their median and best)."""
    if not others:
        return f"best so far {value:.4g} at step {step}; no other trial has reached it"
    median = statistics.median(others)
    return (f"best so far {value:.4g} at step {step} against {len(others)} other trial(s) there: median "
            f"{median:.4g}, best {others[0]:.4g}")
