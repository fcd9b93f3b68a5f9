"""Optuna inside Ray Tune: a Searcher that asks an Optuna study for configs, and a scheduler that asks the
study's pruner, after every FID a trial reports, whether the trial stops.

Both run in the driver and share one ``OptunaBridge``: the study (in its database), and for each Ray
trial its Optuna trial number, its MLflow child run and the FIDs it reported. The bridge's state is
saved with Ray's experiment state, so that a resumed sweep keeps logging into the same runs.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from fpa_core.config import to_dict
from sweeps.space import SweepSpec, flatten
from sweeps.tracking import SweepTracker

log = logging.getLogger(__name__)

PRUNERS = ("median", "percentile", "successive-halving", "hyperband", "none")


def make_pruner(name: str, warmup: int, fid_every: int, max_steps: int) -> optuna.pruners.BasePruner:
    """An Optuna pruner over FIDs reported at training steps (every ``fid_every``): the first ``warmup``
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


@dataclass
class TrialRecord:
    trial_id: str
    number: int  # the Optuna trial
    run_id: str  # the MLflow child run
    params: dict[str, Any]  # the sampled parameters (dotted paths)
    fids: list[list[float]] = field(default_factory=list)  # [step, fid]
    state: str = "RUNNING"  # RUNNING, COMPLETE, PRUNED, ERROR
    steps: int = 0
    placement: dict[str, Any] = field(default_factory=dict)  # node and accelerators the trial ran on

    @property
    def best_fid(self) -> float | None:
        return min((f for _, f in self.fids), default=None)


class OptunaBridge:
    def __init__(self, spec: SweepSpec, study: optuna.Study, tracker: SweepTracker, parent_id: str, sweep: str,
                 trial_context: dict[str, Any]):
        self.spec, self.study, self.tracker, self.parent_id, self.sweep = spec, study, tracker, parent_id, sweep
        self.trial_context = trial_context  # what every trial needs besides its config (tracking, storage)
        self.records: dict[str, TrialRecord] = {}
        self._live: dict[str, optuna.trial.Trial] = {}  # Ray trial id -> Optuna trial handle
        self.best: tuple[float, str] | None = None
        self.max_steps = spec.trial_config({}).steps  # the last evaluation is never pruned

    # -- the searcher's side ------------------------------------------------------------------------------

    def new_trial(self, trial_id: str) -> dict[str, Any]:
        if trial_id in self.records:  # Ray asks again for a trial it restores
            return self._trial_config(self.records[trial_id])
        trial = self.study.ask()
        params = self.spec.sample(trial)
        config = self.spec.trial_config(params)
        run_id = self.tracker.start_child(self.parent_id, self.sweep, trial_id,
                                          flatten(to_dict(config)), tags={"fpa.optuna_trial": str(trial.number)})
        trial.set_user_attr("ray_trial_id", trial_id)
        trial.set_user_attr("mlflow_run_id", run_id)
        record = TrialRecord(trial_id, trial.number, run_id, params)
        self.records[trial_id], self._live[trial_id] = record, trial
        log.info("trial %s (Optuna #%d): %s", trial_id, trial.number, params)
        return self._trial_config(record)

    def _trial_config(self, record: TrialRecord) -> dict[str, Any]:
        return {"train": to_dict(self.spec.trial_config(record.params)), "run_id": record.run_id,
                "trial_id": record.trial_id, **self.trial_context}

    def complete(self, trial_id: str, result: dict[str, Any] | None, error: bool) -> None:
        record = self.records.get(trial_id)
        if record is None or record.state != "RUNNING":
            return
        if result:
            self._note(record, result)
        if error or record.best_fid is None:  # failed, or stopped before any evaluation
            record.state = "ERROR"
            self._tell(record, state=TrialState.FAIL)
        else:
            record.state = "COMPLETE"
            self._tell(record, value=record.best_fid, state=TrialState.COMPLETE)
        self.tracker.finish(record.run_id, record.state, {"fpa.best_fid": record.best_fid, "fpa.steps": record.steps})

    # -- the scheduler's side -----------------------------------------------------------------------------

    def report(self, trial_id: str, result: dict[str, Any]) -> bool:
        """Record a reported FID; True when the pruner stops the trial."""
        record = self.records.get(trial_id)
        if record is None or "fid" not in result or record.state != "RUNNING":
            return False
        self._note(record, result)
        step, fid = int(result["step"]), float(result["fid"])
        if not math.isfinite(fid):
            return False
        trial = self._trial(record)
        trial.report(fid, step)  # a step reported before a restart is kept as it was
        if self.best is None or fid < self.best[0]:
            self.best = (fid, trial_id)
            self.tracker.log_metric(self.parent_id, "best_fid", fid, step)
        if step >= self.max_steps or not trial.should_prune():
            return False
        record.state = "PRUNED"
        self._tell(record, state=TrialState.PRUNED)
        self.tracker.finish(record.run_id, "PRUNED", {"fpa.pruned_at_step": step, "fpa.best_fid": record.best_fid,
                                                      "fpa.steps": record.steps})
        log.info("trial %s pruned at step %d (FID %.3f)", trial_id, step, fid)
        return True

    def _note(self, record: TrialRecord, result: dict[str, Any]) -> None:
        step = int(result.get("step", record.steps))
        record.steps = max(record.steps, step)
        if "fid" in result and not any(s == step for s, _ in record.fids):
            record.fids.append([step, float(result["fid"])])
        for key in ("node_id", "gpu_ids"):
            if key in result:
                record.placement[key] = result[key]

    def _trial(self, record: TrialRecord) -> optuna.trial.Trial:
        if record.trial_id not in self._live:  # a trial of a resumed sweep: rebuild its handle from the study
            frozen = next(t for t in self.study.get_trials(deepcopy=False) if t.number == record.number)
            self._live[record.trial_id] = optuna.trial.Trial(self.study, frozen._trial_id)
        return self._live[record.trial_id]

    def _tell(self, record: TrialRecord, value: float | None = None, state: TrialState = TrialState.COMPLETE) -> None:
        try:
            self.study.tell(record.number, value, state=state)
        except (ValueError, RuntimeError) as e:  # already finished in the study (a resumed sweep)
            log.warning("Optuna trial #%d: %s", record.number, e)

    # -- state, saved with Ray's experiment --------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        return {"records": {k: asdict(v) for k, v in self.records.items()}, "best": self.best}

    def set_state(self, state: dict[str, Any]) -> None:
        self.records = {k: TrialRecord(**v) for k, v in state["records"].items()}
        self.best = tuple(state["best"]) if state["best"] else None


class OptunaSearcher(Searcher):
    """Ray Tune's view of the bridge: suggest() asks Optuna, on_trial_complete() tells it."""

    def __init__(self, bridge: OptunaBridge):
        super().__init__(metric="fid", mode="min")
        self.bridge = bridge

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        return self.bridge.new_trial(trial_id)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.bridge.complete(trial_id, result, error)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "w") as f:
            json.dump(self.bridge.get_state(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path) as f:
            self.bridge.set_state(json.load(f))


class OptunaPruningScheduler(FIFOScheduler):
    """FIFO scheduling; after each reported FID, the Optuna pruner decides whether the trial goes on."""

    def __init__(self, bridge: OptunaBridge):
        super().__init__()
        self.bridge = bridge

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        return TrialScheduler.STOP if self.bridge.report(trial.trial_id, result) else TrialScheduler.CONTINUE


