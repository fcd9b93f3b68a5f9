"""One sweep trial as a Ray Tune function trainable: an fpa_core Trainer that reports every FID evaluation.

The trainer writes its run folder (checkpoints, pictures, metrics) under ``<storage>/<sweep>/trials/<id>``.
The checkpoint reported to Tune is a small folder naming the trainer's latest checkpoint there (a pointer,
so that gigabytes of generator weights are not stored twice); a trial that Ray restarts after a failure
gets it back from ``ray.tune.get_checkpoint()`` and continues from that step.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from fpa_core import checkpoint, storage
from fpa_core.config import ConfigError
from fpa_core.metrics import SCORES, best_evaluation
from fpa_core.train.errors import CannotTrainError, NonFiniteLossError
from fpa_core.train.trainer import Evaluation, Trainer
from sweeps.tracking import TrialLogger
from sweeps.trials import FAILED, TrialTask

log = logging.getLogger(__name__)

POINTER = "fpa_checkpoint.json"
# Failures that a retry would repeat: a loss that diverged, a config the model cannot take, a run that cannot
# start as configured (too few images, a dataset that changed, no bfloat16 or no CUDA here).
DETERMINISTIC = (NonFiniteLossError, ConfigError, CannotTrainError)


def run_trial(config: dict[str, Any]) -> None:
    """Ray Tune's function trainable: ``config`` is a ``TrialTask.to_ray()``."""
    task = TrialTask.from_ray(config)
    torch.set_num_threads(task.threads)
    logger = TrialLogger(task.tracking_uri, task.run_id)
    placement = {"node_id": ray.get_runtime_context().get_node_id(),
                 "gpu_ids": [str(i) for i in ray.get_runtime_context().get_accelerator_ids().get("GPU", [])]}
    capped = _cap_gpu_memory(task.gpus)
    if capped is not None:
        placement["gpu_memory_fraction"] = capped

    told_tune = False  # whether this process has reported to Tune: a trial that ends without it fails there

    def tell_tune(step: int, metrics: dict[str, float], fid_calibrated: bool, latest: str) -> None:
        nonlocal told_tune
        with tempfile.TemporaryDirectory() as folder:
            Path(folder, POINTER).write_text(json.dumps({"checkpoint": latest, "step": step}))
            tune.report({**metrics, "step": step, "fid_calibrated": fid_calibrated, **placement},
                        checkpoint=tune.Checkpoint.from_directory(folder))
        told_tune = True

    def report(step: int, metrics: dict[str, float], fid_calibrated: bool, latest: str, best: str,
               pictures: dict[str, bytes]) -> None:
        logger.log_evaluation(step, metrics, pictures, {
            "fpa.latest_checkpoint": latest, "fpa.best_checkpoint": best, "fpa.fid_calibrated": fid_calibrated,
            "fpa.node_id": placement["node_id"], "fpa.gpu_ids": ",".join(placement["gpu_ids"]) or "none"})
        tell_tune(step, metrics, fid_calibrated, latest)

    def on_evaluation(ev: Evaluation) -> None:
        metrics = {**_scores(ev.scores.to_dict()), **_scores(ev.best, "best_"), "images_per_s": ev.images_per_s,
                   "trial_seconds": ev.wall_time_s, **ev.losses}
        report(ev.step, metrics, ev.calibrated, ev.checkpoint, ev.best_checkpoint, ev.picture_bytes)

    try:
        trainer, reported_step = _trainer(task, on_evaluation)
    except DETERMINISTIC as e:  # a config the trainer cannot take fails the same way on every retry
        return _fail(task, logger, e, 0, placement)
    metric = trainer.cfg.fid.metric

    def stored(i: int) -> tuple[int, dict[str, float]]:  # the trainer's i-th evaluation as Tune metrics
        evaluation, best = trainer.evaluations[i], best_evaluation(trainer.evaluations[:i + 1], metric)
        return int(evaluation["step"]), {**_scores(evaluation), **_scores(best, "best_")}

    # A process that died between writing an evaluation's checkpoint and reporting it: report it now, so
    # that Tune, Optuna and MLflow see every evaluation the trial made.
    best_uri = trainer.folder.best_checkpoint
    for i, evaluation in enumerate(trainer.evaluations):
        if evaluation["step"] > reported_step:
            log.info("trial %s reports step %d's evaluation, written but not reported before the restart",
                     task.trial_id, evaluation["step"])
            report(*stored(i), trainer.evaluator.calibrated, trainer.last_checkpoint, best_uri, {})
    try:
        summary = trainer.train()
    except DETERMINISTIC as e:  # a loss that diverged diverges again from the same checkpoint
        return _fail(task, logger, e, trainer.step, placement)
    if not told_tune and trainer.evaluations:
        # A trial that had trained and reported all the way before its driver died: nothing was left to do,
        # but Tune checks that every trial's last result has the metric. Its last evaluation again (the
        # study and MLflow have it already, and keep it once).
        log.info("trial %s had finished: reporting its last evaluation again", task.trial_id)
        tell_tune(*stored(len(trainer.evaluations) - 1), trainer.evaluator.calibrated, trainer.last_checkpoint)
    logger.log_summary(summary)


def _cap_gpu_memory(fraction: float) -> float | None:
    """A trial that takes a fraction of a GPU (``--gpus-per-trial 0.25``: four to a GPU) may allocate only that
    fraction of its memory, so that its out-of-memory error fails it alone, not its neighbours. The fraction
    capped (also on a machine without CUDA, where Ray's GPUs are logical: what it would cap), or None."""
    if not 0 < fraction < 1:
        return None
    if torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(fraction)
    log.info("this trial may use %.0f%% of its GPU's memory", 100 * fraction)
    return fraction


def _fail(task: TrialTask, logger: TrialLogger, error: Exception, step: int, placement: dict[str, Any]) -> None:
    """End the trial for good, without Ray's retries: the reason in its MLflow run, and a last result that
    says so (``FAILED``), which the sweep's trial book records as ERROR with the reason."""
    reason = f"{type(error).__name__}: {error}"
    log.error("trial %s failed for good at step %d: %s", task.trial_id, step, reason)
    logger.log_failure(reason)
    metric = task.config.fid.metric  # Ray Tune wants the metric in every result
    tune.report({FAILED: reason, "step": step, metric: float("nan"), **placement})


def _trainer(task: TrialTask, on_evaluation) -> tuple[Trainer, int]:
    """A restarted trial (by Ray after a failure, or by a resumed sweep) continues from the newest checkpoint
    it has: the one it last reported to Tune, or a later periodic one in its folder (every checkpoint resumes
    exactly). A new trial starts. Also returns the step up to which the trial's FIDs have been reported (to
    the sweep's study, or in the run it continues)."""
    out, init_from = task.out, task.init_from
    overrides = {"steps": task.config.steps}
    found = checkpoint.latest_checkpoints(storage.join(out, "checkpoints"))  # [(step, uri)], oldest first
    reported_step = task.reported_step
    reported = tune.get_checkpoint()
    if reported is not None:
        with reported.as_directory() as folder:
            pointer = json.loads(Path(folder, POINTER).read_text())
        found.append((pointer["step"], pointer["checkpoint"]))
        reported_step = max(reported_step, pointer["step"])
    if not found and init_from:  # a continuation: from another run's checkpoint
        log.info("trial %s starts from %s", task.trial_id, init_from)
        trainer = Trainer.from_checkpoint(init_from, out, overrides, on_evaluation=on_evaluation)
        # Its best so far is the continued run's, until an evaluation here beats it: start from that file.
        origin_best = storage.join(init_from.rsplit("/", 1)[0], "best.pt")
        if trainer.best is not None and storage.exists(origin_best):
            storage.copy(origin_best, storage.join(out, "checkpoints", "best.pt"))
        return trainer, trainer.step
    if not found:
        return Trainer(task.config, out, on_evaluation=on_evaluation), 0
    if init_from and reported is None:  # the FIDs up to the continued checkpoint are the original run's
        reported_step = checkpoint.load(init_from)["step"]
    trainer = Trainer.from_newest([uri for _, uri in sorted(found)], out, overrides, on_evaluation=on_evaluation)
    log.info("trial %s continues from step %d", task.trial_id, trainer.step)
    return trainer, reported_step


def _scores(evaluation: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """An evaluation's scores as Tune and MLflow metrics: fid, kid, kid_std, precision, recall (with a prefix)."""
    return {f"{prefix}{k}": float(evaluation[k]) for k in SCORES if evaluation.get(k) is not None}


def trial_resources(cpus_per_trial: float, gpus_per_trial: float) -> dict[str, float]:
    return {"cpu": cpus_per_trial, "gpu": gpus_per_trial} if gpus_per_trial else {"cpu": cpus_per_trial}

