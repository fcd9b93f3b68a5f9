"""A sweep's trials: what each one runs (``TrialTask``), and their records (names, parameters, evaluations,
states and the best value so far).

Nothing here talks to Ray, Optuna or MLflow. A ``TrialBook`` keeps the records of one run of the sweep's
trials, builds each trial's task (``TrialBook.task``, the one place a task is made) and tells its ``tracker``
(``sweeps.tracking.SweepTracker``) when a trial ends and when the sweep has a new best;
``sweeps.study.OptunaBridge`` adds the Optuna study, ``FixedTrials`` runs trials planned in advance. Ray Tune
sees either through ``sweeps.ray_tune``, and carries each task to its trial (``sweeps.trainable``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from collections.abc import Iterable
from typing import Any, Protocol

from fpa_core.metrics import SCORES, best_evaluation
from fpa_core.train.config import TrainConfig
from sweeps.simulation import Simulation
from sweeps.sweep import SweepSettings, trial_folder

log = logging.getLogger(__name__)

FAILED = "fpa_failed"  # a reported result's key: the trial failed for good, with this reason (no retry)


@dataclass(frozen=True)
class TrialTask:
    """What one trial runs and everything it needs. ``TrialBook.task`` builds it; it becomes a dict only at the
    Ray boundary (``to_ray``, and ``from_ray`` in the trial's process)."""

    trial_id: str  # trial_<Optuna number>: its folder in the sweep's, its MLflow run's name
    run_id: str  # its MLflow child run
    config: TrainConfig
    sweep_folder: str  # the trial writes its run folder under it (``out``)
    tracking_uri: str  # MLflow, without credentials: the trial's environment holds them
    threads: int  # torch's threads: the whole CPUs the trial takes
    gpus: float = 0.0  # its GPUs; a fraction (four trials to a GPU) caps its share of the GPU's memory
    reported_step: int = 0  # the sweep has the evaluations up to this step: a continued trial reports later ones
    init_from: str | None = None  # a continuation: the other run's checkpoint it starts from
    simulation: Simulation | None = None  # a simulated trial: the curve it replays instead of training

    def __repr__(self) -> str:  # what Ray Tune prints of a trial's config
        start = f", from {self.init_from}" if self.init_from else ""
        simulated = f", simulated ({self.simulation.source})" if self.simulation else ""
        return f"TrialTask({self.trial_id}, run {self.run_id}, {self.config.steps} steps{start}{simulated})"

    @property
    def out(self) -> str:
        """The trial's run folder."""
        return trial_folder(self.sweep_folder, self.trial_id)

    def to_ray(self) -> dict[str, Any]:
        """Ray Tune's config of the trial: its name (Tune names the trial's folder after it) and the task."""
        return {"trial_id": self.trial_id, "task": self}

    @staticmethod
    def from_ray(config: dict[str, Any]) -> TrialTask:
        return config["task"]


class Simulator(Protocol):
    """A simulated sweep's curves: sweeps.simulation.Replay or CurveModel."""

    def simulation(self, params: dict[str, Any], config: TrainConfig, step_seconds: float) -> Simulation: ...


class Retainer(Protocol):
    """What keeps a sweep's storage from growing with its trials: sweeps.retention.Retention."""

    def apply(self, records: Iterable[TrialRecord]) -> None: ...

    def finish(self, records: Iterable[TrialRecord]) -> None: ...


class TrialListener(Protocol):
    """What a trial book tells (sweeps.tracking.SweepTracker writes it to MLflow)."""

    def new_best(self, parent_id: str, metric: str, value: float, evaluations_seen: int) -> None: ...

    def trial_ended(self, record: TrialRecord, state: str, tags: dict[str, Any]) -> None: ...


@dataclass
class TrialRecord:
    trial_id: str  # the trial's name, trial_<Optuna number>: its folder, its MLflow run name, its key
    number: int  # the Optuna trial
    run_id: str  # the MLflow child run
    params: dict[str, Any]  # the sampled parameters (dotted paths)
    config: TrainConfig  # built once, from the spec and the parameters
    metric: str = "fid"  # what the sweep minimises: fid or kid
    init_from: str | None = None  # a continuation: the other run's checkpoint it starts from
    evaluations: list[dict[str, float]] = field(default_factory=list)  # {"step", "fid", "kid", ...}, by step
    state: str = "RUNNING"  # RUNNING, COMPLETE, PRUNED, ERROR
    steps: int = 0
    placement: dict[str, Any] = field(default_factory=dict)  # node and accelerators the trial ran on
    ray_trial_id: str | None = None  # the Ray trial running it; None while no Ray trial holds it
    error: str | None = None  # why it failed for good (a diverged loss, a bad config), where it did
    seconds: float = 0.0  # training and evaluating so far (steps redone after a restart count once)
    trimmed: bool = False  # its checkpoints cut to the generator: it ended outside the sweep's best (retention)

    @property
    def best(self) -> dict[str, float] | None:
        """The evaluation with the lowest value of the sweep's metric."""
        return best_evaluation(self.evaluations, self.metric)

    @property
    def best_value(self) -> float | None:
        return self.best[self.metric] if self.best else None

    def note(self, result: dict[str, Any]) -> None:
        """Take a reported result: the step reached, the scores at that step (once), where the trial ran."""
        step = int(result.get("step", self.steps))
        self.steps = max(self.steps, step)
        if self.metric in result and not any(e["step"] == step for e in self.evaluations):
            self.evaluations.append({"step": step, **{k: float(result[k]) for k in SCORES if k in result}})
            self.evaluations.sort(key=lambda e: e["step"])
        for key in ("node_id", "gpu_ids", "gpu_memory_fraction"):
            if key in result:
                self.placement[key] = result[key]
        self.seconds = max(self.seconds, float(result.get("trial_seconds", 0.0)))


def usage(records: list[TrialRecord], resources: dict[str, float]) -> dict[str, float]:
    """What trials cost: their seconds of training and evaluating, and those as the GPU-hours and CPU-hours
    of the ``resources`` each trial took (``{"cpu": 1, "gpu": 0.25}``)."""
    seconds = sum(r.seconds for r in records)
    return {"trial_hours": seconds / 3600, "gpu_hours": seconds * resources.get("gpu", 0) / 3600,
            "cpu_hours": seconds * resources.get("cpu", 1) / 3600}


def trial_name(number: int) -> str:
    return f"trial_{number:04d}"


class TrialBook:
    """Trials by name, which Ray trial holds each one, and the best value so far."""

    metric: str  # what the sweep minimises: fid or kid
    sweep: str | None  # the sweep's name; None for trials that are never resumed
    tracker: TrialListener
    parent_id: str  # the sweep's MLflow run
    settings: SweepSettings  # where trials write, what each takes
    resources: dict[str, float]  # what each trial takes: {"cpu": 1, "gpu": 0.25}
    simulator: Simulator | None = None  # a simulated sweep's curves (sweeps.simulation)
    retention: Retainer | None = None  # trims the trials that end outside the best few (sweeps.retention)
    records: dict[str, TrialRecord]
    best: tuple[float, str] | None  # (value of the metric, trial) of the best evaluation so far
    reports: int  # evaluations seen: the step of the parent run's best-so-far curve, which only ever falls

    def new_trial(self, ray_trial_id: str) -> TrialTask | None:
        """What the Ray trial ``ray_trial_id`` runs; None when every trial has run."""
        raise NotImplementedError

    def task(self, record: TrialRecord) -> TrialTask:
        """The trial's task: its config, its runs, and the last step whose evaluation the sweep has."""
        return TrialTask(trial_id=record.trial_id, run_id=record.run_id, config=record.config,
                         sweep_folder=self.settings.folder, tracking_uri=self.settings.tracking_uri,
                         threads=max(1, int(self.resources.get("cpu", 1))), gpus=self.resources.get("gpu", 0.0),
                         reported_step=max((e["step"] for e in record.evaluations), default=0),
                         init_from=record.init_from,
                         simulation=self.simulator.simulation(record.params, record.config, self.settings.step_seconds)
                         if self.simulator else None)

    def report(self, ray_trial_id: str, result: dict[str, Any]) -> bool:
        """Take a result a trial reported; True when the trial stops now."""
        raise NotImplementedError

    def to_run(self, total: int) -> int:
        """How many Ray trials a sweep of ``total`` trials still runs: every trial that has not ended (a resumed
        sweep's unfinished trials among them, which its first Ray trials take up)."""
        return max(0, total - sum(r.state != "RUNNING" for r in self.records.values()))

    def _seen(self, record: TrialRecord, value: float) -> None:
        """One more reported evaluation: the parent's best-so-far curve gets a point when it is a new best."""
        self.reports += 1
        if self.best is None or value < self.best[0]:
            self.best = (value, record.trial_id)
            self.tracker.new_best(self.parent_id, record.metric, value, self.reports)

    def _record(self, ray_trial_id: str) -> TrialRecord | None:
        return next((r for r in self.records.values() if r.ray_trial_id == ray_trial_id), None)

    def interrupted(self) -> bool:
        """After Ray's run: a trial that a Ray trial held but that never ended (Ray stopped on Ctrl-C)."""
        return any(r.state == "RUNNING" and r.ray_trial_id is not None for r in self.records.values())

    def failed(self, record: TrialRecord, result: dict[str, Any]) -> bool:
        """A result that says the trial failed for good (``FAILED``): it ends as ERROR with the reason, which
        MLflow, the study and summary.json keep; Ray does not retry it."""
        reason = result.get(FAILED)
        if reason is None:
            return False
        record.error = str(reason)
        if record.state == "RUNNING":
            self._finish(record, "ERROR", {"fpa.error": record.error})
            log.warning("%s failed for good: %s", record.trial_id, record.error)
        return True

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
        """End a trial: COMPLETE, PRUNED or ERROR, and tell the tracker."""
        record.state = state
        self.tracker.trial_ended(record, state, tags or {})
        if self.retention is not None:
            self.retention.apply(self.records.values())

    def attach(self, ray_trial_id: str, name: str | None) -> None:
        """The Ray trial ``ray_trial_id`` holds the trial named in its config."""
        record = self.records.get(name) if name else None
        if record is not None:
            record.ray_trial_id = ray_trial_id


class FixedTrials(TrialBook):
    """The bridge's interface for trials planned in advance, e.g. the continuations of a finished sweep's best
    trials (``fpa-continue``): each Ray trial takes the next record; nothing is sampled or pruned."""

    def __init__(self, records: list[TrialRecord], tracker: TrialListener, parent_id: str, metric: str,
                 settings: SweepSettings, resources: dict[str, float]):
        self.metric, self.settings, self.resources = metric, settings, resources
        self.records = {record.trial_id: record for record in records}
        self.tracker, self.parent_id = tracker, parent_id
        self.sweep = None  # continuations are not resumed: they run again under a new name
        self.best: tuple[float, str] | None = None
        self.reports = 0

    def new_trial(self, ray_trial_id: str) -> TrialTask | None:
        record = self._record(ray_trial_id) or next((r for r in self.records.values() if r.ray_trial_id is None),
                                                    None)
        if record is None:
            return None  # every plan has run
        record.ray_trial_id = ray_trial_id
        return self.task(record)

    def report(self, ray_trial_id: str, result: dict[str, Any]) -> bool:
        record = self._record(ray_trial_id)
        if record is not None and self.failed(record, result):
            return True
        if record is not None and record.metric in result:
            record.note(result)
            self._seen(record, float(result[record.metric]))
        return False
