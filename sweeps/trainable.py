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
from fpa_core.train_config import build_config
from fpa_core.trainer import Evaluation, Trainer
from sweeps.tracking import TrialLogger

log = logging.getLogger(__name__)

POINTER = "fpa_checkpoint.json"


def run_trial(config: dict[str, Any]) -> None:
    torch.set_num_threads(max(1, int(config["threads"])))
    out = storage.join(config["out_root"], "trials", config["trial_id"])
    logger = TrialLogger(config["tracking_uri"], config["run_id"])
    placement = {"node_id": ray.get_runtime_context().get_node_id(),
                 "gpu_ids": [str(i) for i in ray.get_runtime_context().get_accelerator_ids().get("GPU", [])]}

    def on_evaluation(ev: Evaluation) -> None:
        metrics = {"fid": ev.fid, "best_fid": ev.best_fid, "images_per_s": ev.images_per_s, **ev.losses}
        logger.log_evaluation(ev.step, metrics, ev.pictures, {
            "fpa.latest_checkpoint": ev.checkpoint, "fpa.best_checkpoint": ev.best_checkpoint,
            "fpa.fid_calibrated": ev.fid_calibrated, "fpa.node_id": placement["node_id"],
            "fpa.gpu_ids": ",".join(placement["gpu_ids"]) or "none"})
        with tempfile.TemporaryDirectory() as folder:
            Path(folder, POINTER).write_text(json.dumps({"checkpoint": ev.checkpoint, "step": ev.step}))
            tune.report({**metrics, "step": ev.step, "fid_calibrated": ev.fid_calibrated, **placement},
                        checkpoint=tune.Checkpoint.from_directory(folder))

    trainer = _trainer(config, out, on_evaluation)
    summary = trainer.train()
    logger.log_summary(summary)


def _trainer(config: dict[str, Any], out: str, on_evaluation) -> Trainer:
    """A restarted trial continues from the newest checkpoint it has: the one it last reported to Tune, or a
    later periodic one in its folder (every checkpoint resumes exactly). A new trial starts."""
    overrides = {"steps": config["train"]["steps"]}
    found = checkpoint.latest_checkpoints(storage.join(out, "checkpoints"))  # [(step, uri)], oldest first
    reported = tune.get_checkpoint()
    if reported is not None:
        with reported.as_directory() as folder:
            pointer = json.loads(Path(folder, POINTER).read_text())
        found.append((pointer["step"], pointer["checkpoint"]))
    if not found and config.get("init_from"):  # a continuation: from another run's checkpoint
        log.info("trial %s starts from %s", config["trial_id"], config["init_from"])
        return Trainer.from_checkpoint(config["init_from"], out, overrides, on_evaluation=on_evaluation)
    if not found:
        return Trainer(build_config(config["train"]), out, on_evaluation=on_evaluation)
    step, uri = max(found)
    log.info("trial %s continues from %s (step %d)", config["trial_id"], uri, step)
    return Trainer.from_checkpoint(uri, out, overrides, on_evaluation=on_evaluation)


def trial_resources(cpus_per_trial: float, gpus_per_trial: float) -> dict[str, float]:
    return {"cpu": cpus_per_trial, "gpu": gpus_per_trial} if gpus_per_trial else {"cpu": cpus_per_trial}

