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
from fpa_core.metrics import SCORES, best_evaluation
from sweeps.space import SweepSpec, flatten
from sweeps.tracking import SweepTracker

log = logging.getLogger(__name__)

@dataclass
class TrialRecord:
    trial_id: str  # the trial's name, trial_<Optuna number>: its folder, its MLflow run name, its key
    number: int  # the Optuna trial
    run_id: str  # the MLflow child run
    params: dict[str, Any]  # the sampled parameters (dotted paths)
    metric: str = "fid"  # what the sweep minimises: fid or kid
    evaluations: list[dict[str, float]] = field(default_factory=list)  # {"step", "fid", "kid", ...}, by step
    state: str = "RUNNING"  # RUNNING, COMPLETE, PRUNED, ERROR
    steps: int = 0
    placement: dict[str, Any] = field(default_factory=dict)  # node and accelerators the trial ran on
    ray_trial_id: str | None = None  # the Ray trial running it; None while no Ray trial holds it

    @property
    def best(self) -> dict[str, float] | None:
        """The evaluation with the lowest value of the sweep's metric."""
        return best_evaluation(self.evaluations, self.metric)

    @property
    def best_value(self) -> float | None:
        return self.best[self.metric] if self.best else None

    @property
    def best_fid(self) -> float | None:
        """The FID of the best evaluation (the lowest FID when the metric is FID)."""
        return self.best.get("fid") if self.best else None

    @property
    def fids(self) -> list[list[float]]:
        return [[e["step"], e["fid"]] for e in self.evaluations if e.get("fid") is not None]

    def note(self, result: dict[str, Any]) -> None:
        """Take a reported result: the step reached, the scores at that step (once), where the trial ran."""
        step = int(result.get("step", self.steps))
        self.steps = max(self.steps, step)
        if self.metric in result and not any(e["step"] == step for e in self.evaluations):
            self.evaluations.append({"step": step, **{k: float(result[k]) for k in SCORES if k in result}})
            self.evaluations.sort(key=lambda e: e["step"])
        for key in ("node_id", "gpu_ids"):
            if key in result:
                self.placement[key] = result[key]


def trial_name(number: int) -> str:
    return f"trial_{number:04d}"


_FINISHED = {TrialState.COMPLETE: "COMPLETE", TrialState.PRUNED: "PRUNED", TrialState.FAIL: "ERROR"}


class TrialBook:
    """Trials by name, which Ray trial holds each one, and the best value so far; saved with Ray's experiment."""

    records: dict[str, TrialRecord]
    best: tuple[float, str] | None  # (value of the metric, trial) of the best evaluation so far
    reports: int  # evaluations seen: the step of the parent run's best-so-far curve, which only ever falls

    def get_state(self) -> dict[str, Any]:
        return {"records": {k: asdict(v) for k, v in self.records.items()}, "best": self.best, "reports": self.reports}

    def set_state(self, state: dict[str, Any]) -> None:
        self.records = {k: TrialRecord(**v) for k, v in state["records"].items()}
        self.best = tuple(state["best"]) if state["best"] else None
        self.reports = state["reports"]

    def _seen(self, record: TrialRecord, value: float) -> None:
        """One more reported evaluation: the parent's best-so-far curve gets a point when it is a new best."""
        self.reports += 1
        if self.best is None or value < self.best[0]:
            self.best = (value, record.trial_id)
            self.tracker.log_metric(self.parent_id, f"best_{record.metric}", value, self.reports)

    def _record(self, ray_trial_id: str) -> TrialRecord | None:
        return next((r for r in self.records.values() if r.ray_trial_id == ray_trial_id), None)

    def interrupted(self) -> bool:
        """After Ray's run: a trial that a Ray trial held but that never ended (Ray stopped on Ctrl-C)."""
        return any(r.state == "RUNNING" and r.ray_trial_id is not None for r in self.records.values())

    def complete(self, ray_trial_id: str, result: dict[str, Any] | None, error: bool) -> None:
        record = self._record(ray_trial_id)
        if record is None or record.state != "RUNNING":
            return
        if result:
            record.note(result)
        failed = error or record.best is None  # failed, or stopped before any evaluation
        self._finish(record, "ERROR" if failed else "COMPLETE")

    def close_out(self) -> None:
        """At the sweep's end: a trial still RUNNING (its Ray trial lost for good) fails."""
        for record in self.records.values():
            if record.state == "RUNNING":
                self._finish(record, "ERROR", {"fpa.closed_out": True})
                log.warning("%s never finished: closed out as failed", record.trial_id)

    def _finish(self, record: TrialRecord, state: str, tags: dict[str, Any] | None = None) -> None:
        """End a trial in MLflow: COMPLETE, PRUNED or ERROR."""
        record.state = state
        best = record.best or {}
        self.tracker.finish(record.run_id, state, {"fpa.best_fid": best.get("fid"), "fpa.best_kid": best.get("kid"),
                                                   "fpa.steps": record.steps, **(tags or {})})

    def attach(self, ray_trial_id: str, name: str | None) -> None:
        """A Ray trial that Ray restored holds the trial named in its config, whatever the saved state said
        (Ray saves its trials and the searcher's state one after the other)."""
        record = self.records.get(name) if name else None
        if record is not None:
            record.ray_trial_id = ray_trial_id


class OptunaBridge(TrialBook):
    """The study and the sweep's trials, keyed by name (``trial_<Optuna number>``), never by Ray's trial id:
    after a driver dies, a trial it had asked Optuna for but Ray had not yet saved is handed to the next
    Ray trial (``new_trial``), which continues it in the same folder and MLflow run."""

    def __init__(self, spec: SweepSpec, study: optuna.Study, tracker: SweepTracker, parent_id: str, sweep: str,
                 trial_context: dict[str, Any]):
        self.spec, self.study, self.tracker, self.parent_id, self.sweep = spec, study, tracker, parent_id, sweep
        self.trial_context = trial_context  # what every trial needs besides its config (tracking, storage)
        self.records: dict[str, TrialRecord] = {}
        self._live: dict[str, optuna.trial.Trial] = {}  # name -> Optuna trial handle
        self.best: tuple[float, str] | None = None
        self.reports = 0
        config = spec.trial_config({})
        self.metric = config.fid.metric  # what the study minimises
        self.max_steps = config.steps  # the last evaluation is never pruned

    # -- the searcher's side ------------------------------------------------------------------------------

    def new_trial(self, ray_trial_id: str) -> dict[str, Any]:
        record = self._record(ray_trial_id)
        if record is None:
            record = self._orphan() or self._ask()
            record.ray_trial_id = ray_trial_id
        return self._trial_config(record)

    def _ask(self) -> TrialRecord:
        # Each write makes the trial recoverable should the driver die right after it: the study keeps
        # its name and parameters first, then the MLflow run (found again by name), then the run's id.
        trial = self.study.ask()
        params = self.spec.sample(trial)
        name = trial_name(trial.number)
        trial.set_user_attr("fpa.trial", name)
        trial.set_user_attr("fpa.params", params)
        record = TrialRecord(name, trial.number, self._child_run(name, params, trial.number), params, self.metric)
        trial.set_user_attr("mlflow_run_id", record.run_id)
        self.records[name], self._live[name] = record, trial
        log.info("%s (Optuna #%d): %s", name, trial.number, params)
        return record

    def _child_run(self, name: str, params: dict[str, Any], number: int) -> str:
        return self.tracker.find_child(self.sweep, name) or self.tracker.start_child(
            self.parent_id, self.sweep, name, flatten(to_dict(self.spec.trial_config(params))),
            tags={"fpa.optuna_trial": str(number)})

    def _orphan(self) -> TrialRecord | None:
        """A running trial that no Ray trial holds: asked for by a driver that died before Ray saved it."""
        orphans = [r for r in self.records.values() if r.state == "RUNNING" and r.ray_trial_id is None]
        if not orphans:
            return None
        record = min(orphans, key=lambda r: r.number)
        log.info("%s continues where the previous driver left it", record.trial_id)
        return record

    def _trial_config(self, record: TrialRecord) -> dict[str, Any]:
        return {"train": to_dict(self.spec.trial_config(record.params)), "run_id": record.run_id,
                "trial_id": record.trial_id, **self.trial_context}

    def _finish(self, record: TrialRecord, state: str, tags: dict[str, Any] | None = None) -> None:
        """End a trial: MLflow first, the study last. The study is what a resumed sweep trusts, so a driver
        that dies in between leaves the trial running there, and it ends again, the same way or better."""
        super()._finish(record, state, tags)
        if state == "COMPLETE":
            self._tell(record, value=record.best_value, state=TrialState.COMPLETE)
        else:
            self._tell(record, state=TrialState.PRUNED if state == "PRUNED" else TrialState.FAIL)

    # -- the scheduler's side -----------------------------------------------------------------------------

    def report(self, ray_trial_id: str, result: dict[str, Any]) -> bool:
        """Record a reported evaluation; True when the trial stops (pruned now, or finished in the study already)."""
        record = self._record(ray_trial_id)
        if record is None:
            return False
        if record.state != "RUNNING":  # e.g. pruned by a driver that died before Ray saved the decision
            return True
        if self.metric not in result:
            return False
        record.note(result)
        step, value = int(result["step"]), float(result[self.metric])
        if not math.isfinite(value):
            return False
        trial = self._trial(record)
        trial.report(value, step)  # a step reported before a restart is kept as it was
        self._seen(record, value)
        if step >= self.max_steps or not trial.should_prune():
            return False
        self._finish(record, "PRUNED", {"fpa.pruned_at_step": step})
        log.info("%s pruned at step %d (%s %.4g)", record.trial_id, step, self.metric.upper(), value)
        return True

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

    def set_state(self, state: dict[str, Any]) -> None:
        """Ray's saved state of the sweep, brought up to date with the study, which a dead driver may have
        changed after Ray's last save."""
        super().set_state(state)
        self.reconcile()

    def reconcile(self) -> None:
        """Take each trial's state and FIDs from the study; adopt the study's trials Ray never saved."""
        by_number = {r.number: r for r in self.records.values()}
        for frozen in self.study.get_trials(deepcopy=False):
            record = by_number.get(frozen.number)
            if record is None:
                attrs = frozen.user_attrs
                if frozen.state == TrialState.WAITING:  # enqueued, not asked for yet
                    continue
                if "fpa.params" not in attrs:  # asked for by a driver that died before it kept the parameters
                    if frozen.state == TrialState.RUNNING:
                        self.study.tell(frozen.number, state=TrialState.FAIL)
                    continue
                name, params = attrs.get("fpa.trial", trial_name(frozen.number)), attrs["fpa.params"]
                run_id = attrs.get("mlflow_run_id") or self._child_run(name, params, frozen.number)
                record = TrialRecord(name, frozen.number, run_id, params, self.metric)
                self.records[name] = record
            for step, value in frozen.intermediate_values.items():
                record.note({"step": step, self.metric: value})
            if frozen.state in _FINISHED:
                record.state = _FINISHED[frozen.state]
            if record.best_value is not None and (self.best is None or record.best_value < self.best[0]):
                self.best = (record.best_value, record.trial_id)


class FixedTrials(TrialBook):
    """The bridge's interface for trials planned in advance, e.g. the continuations of a finished sweep's best
    trials (``sweeps/resume.py``): each Ray trial takes the next plan; nothing is sampled or pruned."""

    def __init__(self, plans: list[tuple[TrialRecord, dict[str, Any]]], tracker: SweepTracker, parent_id: str,
                 metric: str):
        self.metric = metric
        self.records = {record.trial_id: record for record, _ in plans}
        self.configs = {record.trial_id: config for record, config in plans}
        self.tracker, self.parent_id = tracker, parent_id
        self.best: tuple[float, str] | None = None
        self.reports = 0

    def new_trial(self, ray_trial_id: str) -> dict[str, Any] | None:
        record = self._record(ray_trial_id) or next((r for r in self.records.values() if r.ray_trial_id is None),
                                                    None)
        if record is None:
            return Searcher.FINISHED
        record.ray_trial_id = ray_trial_id
        return self.configs[record.trial_id]

    def report(self, ray_trial_id: str, result: dict[str, Any]) -> bool:
        record = self._record(ray_trial_id)
        if record is not None and record.metric in result:
            record.note(result)
            self._seen(record, float(result[record.metric]))
        return False


class BridgeSearcher(Searcher):
    """Ray Tune's view of a bridge (OptunaBridge or FixedTrials): suggest() asks it for the next trial,
    on_trial_complete() tells it how the trial ended.

    Ray pickles the searcher into the run's ``tuner.pkl``; the bridge (a database connection, maybe
    with credentials) stays out of it, and a resumed sweep binds a new one (``bind``).
    """

    def __init__(self, bridge: OptunaBridge):
        super().__init__(metric=bridge.metric, mode="min")
        self.bridge = bridge

    def bind(self, bridge: OptunaBridge) -> None:
        self.bridge = bridge

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "bridge": None}

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


class BridgeScheduler(FIFOScheduler):
    """FIFO scheduling; after each reported evaluation, the bridge (Optuna's pruner) decides whether the trial goes on."""

    def __init__(self, bridge: OptunaBridge):
        super().__init__()
        self.bridge = bridge

    def bind(self, bridge: OptunaBridge) -> None:
        self.bridge = bridge

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "bridge": None}

    def on_trial_add(self, tune_controller, trial) -> None:
        super().on_trial_add(tune_controller, trial)
        self.bridge.attach(trial.trial_id, trial.config.get("trial_id"))

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        return TrialScheduler.STOP if self.bridge.report(trial.trial_id, result) else TrialScheduler.CONTINUE
