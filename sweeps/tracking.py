"""Every MLflow write of a sweep: an experiment per dataset, a parent run per sweep, a child run per trial.
The one place to change what MLflow records.

The driver's side (``SweepTracker``) creates every run (so a trial that restarts keeps its child run) and
closes them, told by the sweep's trial book (``sweeps.trials``) when a trial ends and when the sweep has a
new best. The trial processes (``TrialLogger``) only log into their child run: each evaluation's metrics
and pictures. Nothing here logs a credential: URIs are logged with their user-info removed, and only fields
of the training config become params.
"""

from __future__ import annotations

import io
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import yaml
from PIL import Image
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from fpa_core import storage
from sweeps.sweep import redact

log = logging.getLogger(__name__)

TAG_SWEEP, TAG_TRIAL, TAG_STATE = "fpa.sweep", "fpa.trial_id", "fpa.state"
TAG_PARENT = "mlflow.parentRunId"
# The experiment's kind: `mlflow ui` then opens it on its training runs, not on the GenAI traces page.
TAG_KIND, KIND = "mlflow.experimentKind", "custom_model_development"
MAX_TAG_LENGTH = 5000  # MLflow's limit on a tag value is 8,000
MAX_PARAM_LENGTH = 6000


def is_local_store(tracking_uri: str) -> bool:
    return tracking_uri.startswith(("sqlite:", "file:")) or "://" not in tracking_uri


LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves a local store


def ui_command(tracking_uri: str) -> str | None:
    """The command that serves a local store's UI; None for a server, whose UI is its own URL."""
    return f"mlflow ui --backend-store-uri {tracking_uri}" if is_local_store(tracking_uri) else None


def experiment_url(tracking_uri: str, experiment_id: str) -> str:
    """The experiment's page in the MLflow UI, on its training runs. MLflow 3's UI opens every experiment in its
    GenAI mode ("Overview: Traces 0") whatever the experiment's kind tag says, once a user's global toggle says
    so; the URL's workflowType wins over both."""
    base = LOCAL_UI if is_local_store(tracking_uri) else redact(tracking_uri).rstrip("/")
    return f"{base}/#/experiments/{experiment_id}?workflowType=machine_learning"


def _store_folder(tracking_uri: str) -> Path:
    """The folder of a local store: the SQLite file's, or the file store itself."""
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri[len("sqlite:///"):]).parent
    return Path(tracking_uri.removeprefix("file://"))


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("_") or "experiment"


class SweepTracker:
    """The driver's side: experiment, parent run, child runs and their end states."""

    def __init__(self, tracking_uri: str, dataset: str, artifact_root: str | None = None):
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri)
        name = f"fpa-{dataset}"
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            location = None
            if artifact_root is not None:
                location = storage.join(artifact_root, name)
            elif is_local_store(tracking_uri):  # beside the store, absolute: trial processes may have another cwd
                location = (_store_folder(tracking_uri) / "mlartifacts" / _slug(name)).resolve().as_uri()
            self.experiment_id = self.client.create_experiment(name, artifact_location=location,
                                                               tags={TAG_KIND: KIND})
        else:
            self.experiment_id = experiment.experiment_id
            if experiment.tags.get(TAG_KIND) != KIND:
                self.client.set_experiment_tag(self.experiment_id, TAG_KIND, KIND)

    @classmethod
    def for_sweep(cls, settings, dataset: str) -> SweepTracker:
        """The tracker of a sweep (``sweeps.sweep.SweepSettings``): artifacts beside a local MLflow store, or in
        the sweep's bucket when the sweep is on S3 and MLflow is local."""
        uri = settings.tracking_uri
        root = storage.join(settings.storage, "mlartifacts") if storage.is_s3(settings.storage) and is_local_store(uri) \
            else None
        return cls(uri, dataset, artifact_root=root)

    def start_sweep(self, settings, dataset: str, resources: dict[str, float], space: dict[str, Any],
                    tags: dict[str, str] | None = None) -> str:
        """A new sweep's parent run: its settings (without credentials) and resources as params, its space."""
        parent_id = self.start_parent(settings.name, {
            **{f"sweep.{k}": v for k, v in settings.public().items()}, "sweep.dataset": dataset,
            "sweep.resources": json.dumps(resources)}, space)
        for key, value in (tags or {}).items():
            self.client.set_tag(parent_id, key, value)
        return parent_id

    def resume_sweep(self, sweep: str) -> str | None:
        """A resumed sweep's parent run, RUNNING again; None when this store does not hold it."""
        parent_id = self.find_parent(sweep)
        if parent_id is not None:
            self.client.update_run(parent_id, "RUNNING")
        return parent_id

    def sweep_interrupted(self, parent_id: str) -> None:
        """Ctrl-C: the parent run is KILLED until --resume; its trials stay RUNNING."""
        self.client.set_terminated(parent_id, "KILLED")

    def find_parent(self, sweep: str) -> str | None:
        runs = self.client.search_runs([self.experiment_id], f"tags.`{TAG_SWEEP}` = '{sweep}' "
                                       f"and tags.`mlflow.runName` = '{sweep}'", max_results=1)
        return runs[0].info.run_id if runs else None

    def start_parent(self, sweep: str, settings: dict[str, Any], space: dict[str, Any]) -> str:
        run = self.client.create_run(self.experiment_id, run_name=sweep, tags={TAG_SWEEP: sweep})
        run_id = run.info.run_id
        self.log_params(run_id, settings)
        self.log_text(run_id, yaml.safe_dump(space, sort_keys=False), "space.yaml")
        return run_id

    def start_child(self, parent_id: str, sweep: str, trial_id: str, params: dict[str, Any],
                    tags: dict[str, str] | None = None) -> str:
        run = self.client.create_run(self.experiment_id, run_name=trial_id, tags={
            TAG_PARENT: parent_id, TAG_SWEEP: sweep, TAG_TRIAL: trial_id, TAG_STATE: "RUNNING", **(tags or {})})
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    def find_child(self, sweep: str, trial_id: str) -> str | None:
        runs = self.client.search_runs([self.experiment_id], f"tags.`{TAG_SWEEP}` = '{sweep}' "
                                       f"and tags.`{TAG_TRIAL}` = '{trial_id}'", max_results=1)
        return runs[0].info.run_id if runs else None

    def trial_run(self, parent_id: str, sweep: str, trial_id: str, params: dict[str, Any],
                  tags: dict[str, str] | None = None) -> str:
        """The trial's child run: found again by name (a driver that died after creating it), else created."""
        return self.find_child(sweep, trial_id) or self.start_child(parent_id, sweep, trial_id, params, tags)

    def trial_ended(self, record, state: str, tags: dict[str, Any]) -> None:
        """A trial's end (``sweeps.trials.TrialRecord``; COMPLETE, PRUNED or ERROR): its state, best scores and
        steps as tags, and the run ended FINISHED, KILLED or FAILED."""
        best = record.best or {}
        self.finish(record.run_id, state, {"fpa.best_fid": best.get("fid"), "fpa.best_kid": best.get("kid"),
                                           "fpa.steps": record.steps, **tags})

    def new_best(self, parent_id: str, metric: str, value: float, evaluations_seen: int) -> None:
        """The parent's best-so-far curve, against the evaluations seen: it only ever falls."""
        self.log_metric(parent_id, f"best_{metric}", value, evaluations_seen)

    def finish(self, run_id: str, state: str, tags: dict[str, Any] | None = None) -> None:
        """state: COMPLETE, PRUNED or ERROR (the Optuna words) -> MLflow FINISHED, KILLED or FAILED."""
        self.client.log_batch(run_id, tags=[RunTag(key, str(value)[:MAX_TAG_LENGTH])
                                            for key, value in {TAG_STATE: state, **(tags or {})}.items()])
        status = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "ERROR": "FAILED"}[state]
        self.client.set_terminated(run_id, status)

    def finish_sweep(self, parent_id: str, summary: dict[str, Any], curves: dict[str, list[tuple[int, float]]],
                     files: dict[str, bytes] | None = None) -> None:
        """The parent run's end: the best config, a plot of the metric against step for every trial (``curves``:
        label -> (step, value) points), ``files`` (name -> contents, e.g. an ablation's table and plot), the
        summary, and FINISHED (FAILED when no trial was scored)."""
        metric = summary["metric"]
        if summary["best"]:
            self.log_text(parent_id, yaml.safe_dump(summary["best"]["config"], sort_keys=False), "best_config.yaml")
            self.client.set_tag(parent_id, "fpa.best_trial", summary["best"]["trial_id"])
            tied = summary.get("tied") or {}
            if tied.get("noise"):  # the trials the evaluations cannot tell from the best
                self.client.set_tag(parent_id, "fpa.tied_trials", ",".join(tied["trials"]))
        png = plot_fid_curves(curves, f"{summary['name']}: {metric.upper()} against step", metric.upper())
        with tempfile.TemporaryDirectory() as folder:
            for name, data in {f"{metric}_vs_step.png": png, **(files or {})}.items():
                path = Path(folder, name)
                path.write_bytes(data)
                self.log_file(parent_id, str(path))
        self.log_text(parent_id, json.dumps(summary, indent=2), "summary.json")
        for key in ("trial_hours", "gpu_hours", "cpu_hours", "wall_hours"):  # what the sweep cost
            self.client.log_metric(parent_id, key, summary["cost"][key])
        self.client.set_terminated(parent_id, "FINISHED" if summary["best"] else "FAILED")

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        items = [Param(k, _param_value(v)) for k, v in sorted(params.items())]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(run_id, params=items[start:start + 100])

    def log_metric(self, run_id: str, key: str, value: float, step: int) -> None:
        self.client.log_metric(run_id, key, value, step=step)

    def log_text(self, run_id: str, text: str, name: str) -> None:
        self.client.log_text(run_id, text, name)

    def log_file(self, run_id: str, path: str, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, path, artifact_path)


class TrialLogger:
    """The trial process's side: metrics and pictures of each evaluation into its child run."""

    IMAGE_KEYS = {"grid": "samples", "strip": "painting"}  # MLflow's image keys: the UI shows them by step

    def __init__(self, tracking_uri: str, run_id: str):
        self.client, self.run_id = MlflowClient(tracking_uri), run_id

    def log_evaluation(self, step: int, metrics: dict[str, float], pictures: dict[str, bytes],
                       tags: dict[str, str]) -> None:
        """Metrics and tags at ``step``; the sample grid and painting strip (PNG bytes, uploaded from memory)
        as images keyed by step, the painting GIF as an artifact under painting/."""
        timestamp = mlflow.utils.time.get_current_time_millis()
        self.client.log_batch(self.run_id,
                              metrics=[Metric(k, float(v), timestamp, step) for k, v in metrics.items()],
                              tags=[RunTag(k, str(v)) for k, v in tags.items()])
        for name, key in self.IMAGE_KEYS.items():
            if name in pictures:
                self.client.log_image(self.run_id, Image.open(io.BytesIO(pictures[name])), key=key, step=step,
                                      timestamp=timestamp)
        if "gif" in pictures:
            with tempfile.TemporaryDirectory() as folder:
                local = Path(folder, f"painting-{step:08d}.gif")
                local.write_bytes(pictures["gif"])
                self.client.log_artifact(self.run_id, str(local), "painting")

    def log_summary(self, summary: dict[str, Any]) -> None:
        self.client.log_text(self.run_id, json.dumps(summary, indent=2), "summary.json")

    def log_failure(self, reason: str) -> None:
        """Why the trial failed for good: a tag, and the text as error.txt."""
        self.client.set_tag(self.run_id, "fpa.error", reason[:MAX_TAG_LENGTH])
        self.client.log_text(self.run_id, reason + "\n", "error.txt")


def _param_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text if len(text) <= MAX_PARAM_LENGTH else text[:MAX_PARAM_LENGTH - 3] + "..."


def plot_fid_curves(curves: dict[str, list[tuple[int, float]]], title: str, ylabel: str = "FID") -> bytes:
    """A PNG of a metric (FID by default) against step, one line per trial."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    for label, points in sorted(curves.items()):
        if points:
            steps, fids = zip(*points)
            ax.plot(steps, fids, marker="o", markersize=3, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if curves:
        ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()
