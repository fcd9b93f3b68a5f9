"""A sweep's Optuna study read, never written: what ``sweeps/status.py`` shows of a sweep that has not
finished. Only Optuna is imported, so that the status command starts in a second; ``sweeps.study`` writes
the attributes named here.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import TrialState

# An ended Optuna trial's state as the sweep names it.
SWEEP_STATES = {TrialState.COMPLETE: "COMPLETE", TrialState.PRUNED: "PRUNED", TrialState.FAIL: "ERROR"}
DRIVER = "fpa.driver"  # the study's attribute: the driver running the sweep now ({host, pid, since}), or None
DRIVER_SECONDS = "fpa.driver_seconds"  # the study's attribute: the sweep's drivers' wall time so far
RESOURCES = "fpa.resources"  # the study's attribute: what each trial takes ({"cpu": 1, "gpu": 0.25})


def overview(optuna_storage: str, name: str) -> dict[str, Any] | None:
    """A sweep's study at a glance: its trials by state, the evaluations of its ended trials, the trials'
    seconds, its driver (or None) and its drivers' wall time so far. None when there is no study."""
    try:
        study = optuna.load_study(study_name=name, storage=optuna_storage)
    except KeyError:
        return None
    trials = study.get_trials(deepcopy=False)
    states = [SWEEP_STATES.get(t.state, t.state.name) for t in trials if t.state != TrialState.WAITING]
    evaluations = [e for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
                   for e in t.user_attrs.get("fpa.evaluations", [])]
    return {"states": {state: states.count(state) for state in sorted(set(states))}, "evaluations": evaluations,
            "seconds": sum(float(t.user_attrs.get("fpa.seconds", 0.0)) for t in trials),
            "driver": study.user_attrs.get(DRIVER), "driver_seconds": study.user_attrs.get(DRIVER_SECONDS, 0.0),
            "resources": study.user_attrs.get(RESOURCES, {})}
