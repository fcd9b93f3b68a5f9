"""The Optuna study of a sweep: created or found, asked for trials, told how they ended, and consulted after
every evaluation a trial reports on whether it stops (its pruner, from ``sweeps.pruning``).

``OptunaBridge`` is the sweep's trial book (``sweeps.trials``) backed by the study, keyed by trial name
(``trial_<Optuna number>``), never by Ray's trial id. The study is the sweep's state, and all that a resumed
sweep trusts (``reconcile``): each trial that a dead or interrupted driver left unfinished is handed to the
next Ray trial (``new_trial``), which continues it in the same folder and MLflow run.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import math
import os
import socket
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from fpa_core.config import flatten
from fpa_core.train.config import TrainConfig
from sweeps.pruning import explain, make_pruner
from sweeps.space import SweepSpec
from sweeps.overview import DRIVER, DRIVER_SECONDS, PROGRESS, RESOURCES, SWEEP_STATES
from sweeps.sweep import SweepError, SweepSettings, redact
from sweeps.tracking import SweepTracker
from sweeps.trials import Simulator, TrialBook, TrialRecord, TrialTask, trial_name, usage

log = logging.getLogger(__name__)

RECORD_DIGEST = "fpa.sweep_json_sha256"  # the study's attribute: the digest of the sweep's sweep.json


def open_store(settings: SweepSettings) -> optuna.storages.RDBStorage:
    """The sweep's Optuna database (--optuna-storage)."""
    if settings.optuna_storage.startswith("sqlite:///"):  # SQLite makes the file, not its folder
        Path(settings.optuna_storage[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.RDBStorage(settings.optuna_storage)


def open_study(spec: SweepSpec, settings: SweepSettings, config: TrainConfig,
               store: optuna.storages.BaseStorage) -> optuna.Study:
    """The sweep's study in its Optuna ``store`` (created, or found by name): its sampler, the sweep's pruner
    (for ``config``'s evaluations: the spec's trial config without sampled parameters), and the first trial
    enqueued when the spec names one."""
    study = optuna.create_study(
        study_name=settings.name, storage=store, direction="minimize", load_if_exists=True,
        sampler=_sampler(spec, settings.seed),
        pruner=make_pruner(settings.pruner, settings.warmup, config.fid.every, config.steps, settings.patience))
    if study.trials and spec.grid is None:
        # A resumed search: TPE seeded anew would draw again the configs it drew before. (GridSampler keeps its
        # seed: its cells are numbered in the order that seed shuffles them, and it skips the cells that ran.)
        study.sampler = _sampler(spec, resumed_seed(settings.seed, len(study.trials)))
    first = spec.first_params()
    if first is not None and not study.trials:
        study.enqueue_trial(first, skip_if_exists=True)
        origin = f"the {spec.dataset} row of Table 3" if spec.first == "table3" else f"the base config {spec.base}"
        log.info("the first trial is %s: %s", origin, first)
    return study


def resumed_seed(seed: int | None, asked: int) -> int | None:
    """The sampler's seed for a sweep resumed after ``asked`` trials: derived from the sweep's seed and that
    count, so that the resumed sampler neither replays the draws of the one before (a seeded RNG made anew
    starts its draws over: the resumed sweep would train configs it had trained) nor stops being
    deterministic. None stays None (unseeded)."""
    return None if seed is None else (seed * 1_000_003 + asked) % 2**32


def keep_record_digest(study: optuna.Study, digest: str) -> None:
    """A new sweep's study keeps the digest of its sweep.json (``sweeps.sweep.record_digest``)."""
    study.set_user_attr(RECORD_DIGEST, digest)


def check_record(settings: SweepSettings, digest: str) -> None:
    """Before a sweep resumes: its study is in the Optuna store, and its sweep.json (in the storage, which
    need not be trusted) is the one the sweep was started with. A SweepError says what is wrong."""
    store = open_store(settings)
    try:
        study = optuna.load_study(study_name=settings.name, storage=store)
    except KeyError:
        raise SweepError(f"sweep {settings.name} has no Optuna study in {redact(settings.optuna_storage)}; pass "
                         "the --optuna-storage it ran with") from None
    recorded = study.user_attrs.get(RECORD_DIGEST)
    if recorded is None:  # a sweep started before its study kept the digest: trusted once, kept from now on
        log.warning("sweep %s's study holds no digest of its sweep.json; keeping this one's", settings.name)
        keep_record_digest(study, digest)
    elif recorded != digest:
        raise SweepError(
            f"{settings.folder}/sweep.json is not the one sweep {settings.name} was started with (its Optuna study "
            f"keeps SHA-256 {recorded[:12]}..., the file has {digest[:12]}...): something changed it in the "
            "storage. Not resumed; restore the file, or start a new sweep")


@contextlib.contextmanager
def driving(study: optuna.Study, resources: dict[str, float]):
    """While the block runs, the study names this process as the sweep's driver (``fpa-status`` tells
    running from interrupted by it); afterwards it adds the block's wall time to the sweep's."""
    started = time.monotonic()
    study.set_user_attr(RESOURCES, resources)
    study.set_user_attr(DRIVER, {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()})
    try:
        yield
    finally:
        study.set_user_attr(DRIVER, None)
        study.set_user_attr(DRIVER_SECONDS, study.user_attrs.get(DRIVER_SECONDS, 0.0) + time.monotonic() - started)


def _sampler(spec: SweepSpec, seed: int | None) -> optuna.samplers.BaseSampler:
    """A search: TPE (multivariate, grouped). An ablation: GridSampler, each cell and seed once; it reads the
    study's trials, so a resumed ablation does not repeat a cell that ran or runs."""
    if spec.grid is not None:
        return _Grid(spec.grid_space(), seed=seed)
    return optuna.samplers.TPESampler(multivariate=True, group=True, seed=seed)


class _Grid(optuna.samplers.GridSampler):
    """GridSampler without its stop: that is for ``study.optimize``, which the sweep does not use (outside
    it ``study.stop`` raises). Ray Tune runs the grid's number of trials, cells x seeds."""

    def after_trial(self, study, trial, state, values) -> None:
        pass


class OptunaBridge(TrialBook):
    """The study and the sweep's trials, keyed by name (``trial_<Optuna number>``), never by Ray's trial id:
    a resumed sweep's unfinished trials are handed to its first Ray trials (``new_trial``), each of which
    continues one in the same folder and MLflow run."""

    def __init__(self, spec: SweepSpec, study: optuna.Study, store: optuna.storages.BaseStorage,
                 tracker: SweepTracker, parent_id: str, settings: SweepSettings, resources: dict[str, float],
                 config: TrainConfig, simulator: Simulator | None = None):
        """``store``: the study's storage; ``config``: the spec's trial config without sampled parameters;
        ``resources``: what each trial takes. No new trial starts once the trials have used the settings'
        budget of GPU-hours (or CPU-hours)."""
        self.spec, self.study, self.store = spec, study, store
        self.tracker, self.parent_id, self.sweep = tracker, parent_id, settings.name
        self.settings, self.resources, self.simulator = settings, resources, simulator
        self.records: dict[str, TrialRecord] = {}
        self._live: dict[str, optuna.trial.Trial] = {}  # name -> Optuna trial handle
        self.best: tuple[float, str] | None = None
        self.reports = 0
        self._at_step: dict[int, list[float]] = {}  # step -> the trials' best so far there, sorted (as the pruner)
        self.metric = config.fid.metric  # what the study minimises
        self.max_steps = config.steps  # the last evaluation is never pruned

    # -- the searcher's side ------------------------------------------------------------------------------

    def new_trial(self, ray_trial_id: str) -> TrialTask | None:
        record = self._record(ray_trial_id)
        if record is None:
            record = self._orphan()
            if record is None and self._budget_spent():
                return None  # no new trial; the running ones finish
            record = record or self._ask()
            record.ray_trial_id = ray_trial_id
        return self.task(record)

    def _budget_spent(self) -> bool:
        """Whether the trials have used the sweep's budget: GPU-hours (--budget-gpu-hours) or CPU-hours
        (--budget-cpu-hours), each counted in its own unit."""
        spent = usage(list(self.records.values()), self.resources)
        for unit, budget in (("GPU", self.settings.budget_gpu_hours), ("CPU", self.settings.budget_cpu_hours)):
            if budget is not None and spent[f"{unit.lower()}_hours"] >= budget:
                log.warning("the sweep's budget of %.3g %s-hours is spent (%.3g): no new trial starts", budget,
                            unit, spent[f"{unit.lower()}_hours"])
                return True
        return False

    def _ask(self) -> TrialRecord:
        # Each write makes the trial recoverable should the driver die right after it: the study keeps
        # its name and parameters first, then the MLflow run (found again by name), then the run's id.
        trial = self.study.ask()
        params = self.spec.sample(trial)
        name = trial_name(trial.number)
        trial.set_user_attr("fpa.trial", name)
        trial.set_user_attr("fpa.params", params)
        config = self.spec.trial_config(params)  # built once: it travels with the record
        record = TrialRecord(name, trial.number, self._child_run(name, config, trial.number, new=True), params,
                             config, self.metric)
        trial.set_user_attr("mlflow_run_id", record.run_id)
        self.records[name], self._live[name] = record, trial
        log.info("%s (Optuna #%d): %s", name, trial.number, params)
        return record

    def _child_run(self, name: str, config: TrainConfig, number: int, new: bool = False) -> str:
        """The trial's MLflow run: created for a trial just asked for (``new``: no run can have its name yet),
        else found again by name, or created (a driver that died between the two writes)."""
        tags = {"fpa.optuna_trial": str(number)}
        if self.settings.simulate:
            tags["fpa.simulated"] = self.settings.simulate
        start = self.tracker.start_child if new else self.tracker.trial_run
        return start(self.parent_id, self.sweep, name, flatten(config), tags=tags)

    def _orphan(self) -> TrialRecord | None:
        """A running trial that no Ray trial holds: one that a resumed sweep's previous driver left unfinished."""
        orphans = [r for r in self.records.values() if r.state == "RUNNING" and r.ray_trial_id is None]
        if not orphans:
            return None
        record = min(orphans, key=lambda r: r.number)
        log.info("%s continues where the previous driver left it", record.trial_id)
        return record

    def _finish(self, record: TrialRecord, state: str, tags: dict[str, Any] | None = None) -> None:
        """End a trial: MLflow first, the study last. The study is what a resumed sweep trusts, so a driver
        that dies in between leaves the trial running there, and it ends again, the same way or better."""
        super()._finish(record, state, tags)
        if record.error is not None:  # why it failed, beside its parameters in the study
            try:
                self._trial(record).set_user_attr("fpa.error", record.error)
            except RuntimeError as e:  # finished in the study already, by another driver on the same sweep
                log.warning("Optuna trial #%d: %s", record.number, e)
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
        if record.state != "RUNNING":  # a result that Ray sent before it stopped a pruned trial
            return True
        if self.failed(record, result):
            return True
        if self.metric not in result:
            return False
        step, value = int(result["step"]), float(result[self.metric])
        known = any(e["step"] == step for e in record.evaluations)  # reported before a restart
        record.note(result)
        if known or not math.isfinite(value):  # a known step was counted and decided on then, and stays so
            return False
        trial = self._trial(record)
        best = record.best_value  # what the pruner sees: the best so far, never one noisy evaluation
        trial.report(best, step)
        trial.set_user_attr(PROGRESS, {"evaluations": record.evaluations, "placement": record.placement,
                                       "seconds": record.seconds})  # all its scores, for a resumed sweep
        self._seen(record, value)
        others = self._at_step.setdefault(step, [])
        why = explain(others, step, best)  # before this trial's value joins the others
        bisect.insort(others, best)
        if step >= self.max_steps:
            return False
        prune = trial.should_prune()
        log.info("%s at step %d: %s %.4g, %s: %s", record.trial_id, step, self.metric.upper(), value, why,
                 "pruned" if prune else "continues")
        if not prune:
            return False
        self._finish(record, "PRUNED", {"fpa.pruned_at_step": step, "fpa.pruned_because": why})
        return True

    def _trial(self, record: TrialRecord) -> optuna.trial.Trial:
        if record.trial_id not in self._live:  # a trial of a resumed sweep: its handle, rebuilt from the store
            study_id = self.store.get_study_id_from_name(self.study.study_name)
            trial_id = self.store.get_trial_id_from_study_id_trial_number(study_id, record.number)
            self._live[record.trial_id] = optuna.trial.Trial(self.study, trial_id)
        return self._live[record.trial_id]

    def _tell(self, record: TrialRecord, value: float | None = None, state: TrialState = TrialState.COMPLETE) -> None:
        # A trial finished in the study already (by another driver on the same sweep) stays as it ended.
        self.study.tell(record.number, value, state=state, skip_if_finished=True)

    # -- a resumed sweep ---------------------------------------------------------------------------------

    def reconcile(self) -> None:
        """The sweep's trials as its study holds them (a resumed sweep trusts nothing else): each trial's
        name, parameters, MLflow run, evaluations, state and failure. A trial still RUNNING there is handed to
        the next Ray trial (``new_trial``), which continues it from its checkpoints."""
        for frozen in self.study.get_trials(deepcopy=False):
            attrs = frozen.user_attrs
            if frozen.state == TrialState.WAITING:  # enqueued, not asked for yet
                continue
            if "fpa.params" not in attrs:  # asked for by a driver that died before it kept the parameters
                if frozen.state == TrialState.RUNNING:
                    self.study.tell(frozen.number, state=TrialState.FAIL)
                continue
            name, params = attrs.get("fpa.trial", trial_name(frozen.number)), attrs["fpa.params"]
            config = self.spec.trial_config(params)
            run_id = attrs.get("mlflow_run_id") or self._child_run(name, config, frozen.number)
            progress = attrs.get(PROGRESS, {})
            record = TrialRecord(name, frozen.number, run_id, params, config, self.metric,
                                 placement=dict(progress.get("placement", {})), error=attrs.get("fpa.error"),
                                 seconds=float(progress.get("seconds", 0.0)))
            # Every score of each evaluation (the study's own values hold only the metric's)
            for evaluation in progress.get("evaluations", []):
                record.note(evaluation)
            for step, value in frozen.intermediate_values.items():
                record.note({"step": step, self.metric: value})
                bisect.insort(self._at_step.setdefault(step, []), value)
            record.state = SWEEP_STATES.get(frozen.state, "RUNNING")
            self.records[name] = record
            self.reports += len(record.evaluations)
            if record.best_value is not None and (self.best is None or record.best_value < self.best[0]):
                self.best = (record.best_value, record.trial_id)
