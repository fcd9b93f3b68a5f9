"""One simulated trial as a Ray Tune function trainable: it replays its ``TrialTask.simulation`` instead of
training, and reports to Tune and MLflow what a real trial (``sweeps.trainable``) reports, at the same steps.

It sleeps ``step_seconds`` a step, so it takes a small share of a CPU (``--cpus-per-trial`` defaults to 1/16
for a simulated sweep) and imports neither torch nor fpa_core's networks. Its Tune checkpoint is the step it has
reached: a trial that Ray restarts, or a resumed sweep, goes on from the evaluation after the last one the
sweep has. Its MLflow run gets the metrics, no pictures: a simulated trial paints nothing.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
from ray import tune

from fpa_core.metrics import SCORES, best_evaluation
from sweeps.tracking import TrialLogger
from sweeps.trials import TrialTask

log = logging.getLogger(__name__)

POINTER = "fpa_simulated.json"


def run_simulated_trial(config: dict[str, Any]) -> None:
    task = TrialTask.from_ray(config)
    simulation, metric = task.simulation, task.config.fid.metric
    logger = TrialLogger(task.tracking_uri, task.run_id)
    placement = {"node_id": ray.get_runtime_context().get_node_id(),
                 "gpu_ids": [str(i) for i in ray.get_runtime_context().get_accelerator_ids().get("GPU", [])]}
    done = task.reported_step  # the sweep has the evaluations up to here
    restored = tune.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as folder:
            done = max(done, json.loads(Path(folder, POINTER).read_text())["step"])
    evaluations = list(simulation.evaluations)
    left = [e for e in evaluations if e["step"] > done] or evaluations[-1:]  # a finished trial reports its last
    step = min(done, left[0]["step"])  # a finished trial's last evaluation again: no sleep
    for evaluation in left:
        time.sleep(max(0, evaluation["step"] - step) * simulation.step_seconds)
        step = evaluation["step"]
        seen = [e for e in evaluations if e["step"] <= step]
        metrics = {**_scores(evaluation), **_scores(best_evaluation(seen, metric), "best_"),
                   "trial_seconds": step * simulation.step_seconds,
                   "images_per_s": task.config.optim.batch_size / max(simulation.step_seconds, 1e-9)}
        logger.log_evaluation(step, metrics, {}, {"fpa.simulated": simulation.source,
                                                  "fpa.replays": simulation.replays or "",
                                                  "fpa.node_id": placement["node_id"]})
        with tempfile.TemporaryDirectory() as folder:
            Path(folder, POINTER).write_text(json.dumps({"step": step}))
            tune.report({**metrics, "step": step, "fid_calibrated": False, **placement},
                        checkpoint=tune.Checkpoint.from_directory(folder))
    logger.log_summary({"simulated": simulation.source, "replays": simulation.replays, "steps": step,
                        "evaluations": evaluations})


def _scores(evaluation: dict[str, Any] | None, prefix: str = "") -> dict[str, float]:
    return {f"{prefix}{k}": float(evaluation[k]) for k in SCORES if evaluation and evaluation.get(k) is not None}
