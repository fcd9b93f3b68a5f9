"""The sweep driver: connects Ray, Optuna and MLflow, runs the Tuner, writes the summary."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
import ray
import torch
import yaml
from ray import tune

from fpa_core import checkpoint, storage
from fpa_core.config import to_dict
from fpa_core.inception_weights import FIDWeightsInvalid, FIDWeightsUnavailable, find_weights
from fpa_core.train_config import build_config
from fpa_core.trainer import prepare_real_features
from fpa_core.unet import fpa_of
from sweeps.pruning import make_pruner
from sweeps.search import BridgeScheduler, BridgeSearcher, FixedTrials, OptunaBridge, TrialRecord
from sweeps.space import SweepSpec, flatten, spec_from_dict
from sweeps.tracking import SweepTracker, default_tracking_uri, is_local_store, plot_fid_curves, redact, ui_command
from sweeps.trainable import run_trial, trial_resources

log = logging.getLogger(__name__)

KEY_PARAMS = ("model.input_generator", "model.d_latent", "model.d_hidden", "model.num_layers", "model.d_in",
              "model.d_in_proj", "model.rule", "model.steps", "optim.lr", "unet.dim", "unet.blocks")  # where sampled


@dataclass
class SweepSettings:
    name: str
    storage: str  # an absolute folder or s3://bucket/prefix
    tracking_uri: str | None = None
    optuna_storage: str | None = None
    num_trials: int = 20
    max_concurrent: int | None = None
    max_failures: int = 2
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None  # None: 1 when the cluster has GPUs when the sweep starts, else 0
    pruner: str = "median"
    warmup: int = 1
    seed: int = 0
    address: str | None = None
    profile: str | None = None
    stage: str = "fpa"  # fpa, or unet: a U-Net on the frozen FPA of ``base``
    metric: str = "fid"  # what the study minimises and prunes on (fid.metric of every trial)
    base: str | None = None  # stage unet: champion, models:/NAME@ALIAS or /NAME/VERSION, or a checkpoint

    def public(self) -> dict[str, Any]:
        """The settings as recorded in MLflow and summary.json: no credential in any URL."""
        out = asdict(self)
        out["optuna_storage"] = redact(self.optuna_storage)
        out["tracking_uri"] = redact(self.tracking_uri)
        return out


SWEEP_FILE = "sweep.json"  # in the sweep's folder: what --resume needs to run it again
_USER_MAX_PENDING = os.environ.get("TUNE_MAX_PENDING_TRIALS_PG")  # a user's own setting wins


class SweepNotFound(ValueError):
    """--resume named a sweep that the storage does not hold."""


class SweepInterrupted(RuntimeError):
    """Ctrl-C (or SIGTERM to Ray's driver): Ray saved the sweep's state; ``--resume`` continues it."""

    def __init__(self, name: str, resumable: bool = True):
        hint = (f"continue it with: python sweeps/launch.py --resume {name} (and the same --storage)" if resumable
                else "its trials' checkpoints are kept; run sweeps/resume.py again under a new --name")
        super().__init__(f"{name} was interrupted and Ray saved its state; {hint}")
        self.name = name


def run_sweep(spec: SweepSpec, settings: SweepSettings) -> dict[str, Any]:
    """Run a new sweep to its end; returns (and writes) its summary."""
    spec = _resolve_fid_backbone(spec).with_fixed({"fid": {"metric": settings.metric}})
    sweep_root = storage.join(settings.storage, settings.name)
    if storage.exists(storage.join(sweep_root, SWEEP_FILE)):
        raise ValueError(f"{sweep_root} already holds a sweep named {settings.name}: continue it with "
                         f"--resume {settings.name}, or choose another --name")
    settings = dataclasses.replace(  # the stores it uses, recorded for --resume (without credentials)
        settings, tracking_uri=settings.tracking_uri or default_tracking_uri(),
        optuna_storage=settings.optuna_storage or _default_optuna_storage(settings))
    base = None
    if settings.stage == "unet":
        spec, base = _unet_stage(spec, settings, sweep_root)
    storage.write_bytes(storage.join(sweep_root, SWEEP_FILE), json.dumps(
        {"spec": spec.to_dict(), "settings": settings.public(), "base": base}, indent=2).encode())
    return _run(spec, settings, resume=False, base=base)


def _unet_stage(spec: SweepSpec, settings: SweepSettings, sweep_root: str) -> tuple[SweepSpec, dict[str, Any]]:
    """The frozen FPA of a U-Net sweep: copied into the sweep's folder (every trial, on any node, reads it
    there), its model section fixed in every trial, its FID kept to show beside the U-Net's."""
    source = settings.base or "champion"
    if source == "champion":
        from sweeps.registry import model_name

        source = f"models:/{model_name(spec.dataset)}@champion"
    if source.startswith("models:/"):
        from sweeps.registry import download_model

        local = download_model(source, settings.tracking_uri)
    else:
        local = source
    state = checkpoint.load(local)
    if state["config"].get("stage", "fpa") == "unet":  # a refined champion: refine its FPA anew
        log.info("--base %s is an FPA with a U-Net; the new U-Nets refine its FPA", source)
        state = fpa_of(state)
    uri = storage.join(sweep_root, "base", "generator.pt")
    checkpoint.save(uri, checkpoint.generator_only(state))
    scores = next((e for e in state["evaluations"] if e["step"] == state["step"]), {})
    base = {"source": source, "uri": uri, "step": state["step"], "fid": scores.get("fid"), "kid": scores.get("kid"),
            "fid_calibrated": state["fid_calibrated"]}
    log.info("U-Net stage on %s (step %d, FID %s)", source, base["step"], base["fid"])
    fixed = {"stage": "unet", "base_generator": uri,
             **{f"model.{key}": value for key, value in state["config"]["model"].items()}}
    return spec.with_fixed(fixed), base


def resume_sweep(name: str, storage_root: str, *, tracking_uri: str | None = None,
                 optuna_storage: str | None = None, address: str | None = None) -> dict[str, Any]:
    """Continue a sweep whose driver died: finished trials stay, running ones continue from their
    checkpoints, pending ones start, all in their MLflow runs and Optuna trials. The stores are the
    ones the sweep was started with unless given (a URL with credentials was recorded without them)."""
    saved = load_saved_sweep(storage_root, name)
    recorded = saved["settings"]
    settings = SweepSettings(**{**recorded, "storage": storage_root,
                                "tracking_uri": tracking_uri or recorded["tracking_uri"],
                                "optuna_storage": optuna_storage or recorded["optuna_storage"],
                                "address": address})
    return _run(spec_from_dict(saved["spec"]), settings, resume=True, base=saved.get("base"))


def load_saved_sweep(storage_root: str, name: str) -> dict[str, Any]:
    try:
        return json.loads(storage.read_bytes(storage.join(storage_root, name, SWEEP_FILE)))
    except FileNotFoundError:
        known = list_sweeps(storage_root)
        raise SweepNotFound(f"no sweep named {name!r} in {storage_root}; it holds "
                            f"{', '.join(known) if known else 'no sweeps'} (pass --storage where the sweep ran)") \
            from None


def list_sweeps(storage_root: str) -> list[str]:
    """The sweeps a storage location holds, by name."""
    return [name for name in storage.list_names(storage_root)
            if storage.exists(storage.join(storage_root, name, SWEEP_FILE))]


def _run(spec: SweepSpec, settings: SweepSettings, resume: bool, base: dict[str, Any] | None = None
         ) -> dict[str, Any]:
    tracking_uri = settings.tracking_uri or default_tracking_uri()
    optuna_storage = settings.optuna_storage or _default_optuna_storage(settings)
    config = spec.trial_config({})
    resources = _connect(settings)
    tracker = _tracker(settings, tracking_uri, spec.dataset)
    parent_id = tracker.find_parent(settings.name) if resume else None
    if resume and parent_id is None:
        raise ValueError(f"sweep {settings.name} has no parent run in the MLflow store {redact(tracking_uri)}; "
                         "pass the --tracking-uri it ran with")
    if resume:
        tracker.client.update_run(parent_id, "RUNNING")
        if settings.name not in optuna.get_all_study_names(optuna_storage):
            raise ValueError(f"sweep {settings.name} has no Optuna study in {redact(optuna_storage)}; "
                             "pass the --optuna-storage it ran with")
    else:
        parent_id = _start_parent(tracker, settings, spec, resources)
        if base is not None and base["fid"] is not None:  # the FPA's FID beside the U-Net's
            tracker.log_metric(parent_id, "base_fid", base["fid"], base["step"])
    study = optuna.create_study(
        study_name=settings.name, storage=optuna_storage, direction="minimize", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(multivariate=True, group=True, seed=settings.seed),
        pruner=make_pruner(settings.pruner, settings.warmup, config.fid.every, config.steps))
    first = spec.first_params()
    if first is not None and not study.trials:
        study.enqueue_trial(first, skip_if_exists=True)
        origin = f"the {spec.dataset} row of Table 3" if spec.first == "table3" else f"the base config {spec.base}"
        log.info("the first trial is %s: %s", origin, first)

    _prepare_real_features(config, settings, resources)
    bridge = OptunaBridge(spec, study, tracker, parent_id, settings.name, _trial_context(settings, tracking_uri))
    trainable = tune.with_resources(run_trial, resources)
    tuner = _restored_tuner(settings, trainable, bridge, resources) if resume else \
        _new_tuner(settings, trainable, bridge, resources)
    _fit(tuner, bridge, settings, tracker, parent_id)
    bridge.close_out()
    return _finish(spec, settings, bridge, tracker, parent_id, config.fid.backbone == "inception", base)


def _fit(tuner: tune.Tuner, bridge, settings: SweepSettings, tracker: SweepTracker, parent_id: str,
         resumable: bool = True) -> None:
    """Run the trials. Interrupted (Ctrl-C: Ray saves the state and returns, its trials stopped without
    ending): the trials stay RUNNING in Optuna and MLflow for --resume, the parent run is KILLED until then."""
    tuner.fit()
    if bridge.interrupted():
        tracker.client.set_terminated(parent_id, "KILLED")
        raise SweepInterrupted(settings.name, resumable)


def continue_sweep(sweep: str, storage_root: str, *, top_k: int, steps: int, start: str = "best",
                   name: str | None = None, tracking_uri: str | None = None, address: str | None = None,
                   cpus_per_trial: float = 1.0, max_concurrent: int | None = None) -> dict[str, Any]:
    """Continue the ``top_k`` best trials of a finished sweep, each from its best (``start="best"``) or latest
    checkpoint, to ``steps`` training steps, unpruned, as one new Ray Tune run. Each continuation logs into
    a new MLflow child run linked to the trial's own (tag and param ``fpa.continues_run``)."""
    from sweeps.registry import storage_summary

    finished = storage_summary(storage_root, sweep)
    saved = load_saved_sweep(storage_root, sweep)
    metric = finished["metric"]
    ranked = sorted((t for t in finished["trials"] if t["best_value"] is not None), key=lambda t: t["best_value"])
    if not ranked:
        raise ValueError(f"sweep {sweep} has no trial with an evaluation to continue from")
    picked = ranked[:top_k]
    if steps <= max(t["steps"] for t in picked):
        raise ValueError(f"--steps {steps} does not go beyond the trials' {max(t['steps'] for t in picked)} steps")
    name = name or f"{sweep}-continued-{time.strftime('%Y%m%d-%H%M%S')}"
    if storage.exists(storage.join(storage_root, name)):
        raise ValueError(f"{storage.join(storage_root, name)} already exists; choose another --name")
    settings = SweepSettings(**{**saved["settings"], "name": name, "storage": storage_root, "num_trials": len(picked),
                                "pruner": "none", "optuna_storage": None, "address": address,
                                "tracking_uri": tracking_uri or saved["settings"]["tracking_uri"],
                                "cpus_per_trial": cpus_per_trial, "max_concurrent": max_concurrent})
    spec = spec_from_dict(saved["spec"]).with_fixed({"steps": steps})
    tracking_uri = settings.tracking_uri or default_tracking_uri()
    context = _trial_context(settings, tracking_uri)
    resources = _connect(settings)
    tracker = _tracker(settings, tracking_uri, spec.dataset)
    parent_id = _start_parent(tracker, settings, spec, resources, {"fpa.continues_sweep": sweep})

    plans = []
    for trial in picked:
        folder = storage.join(storage_root, sweep, "trials", trial["trial_id"], "checkpoints")
        latest = checkpoint.latest_checkpoints(folder)
        origin = storage.join(folder, "best.pt") if start == "best" or not latest else latest[-1][1]
        config = to_dict(spec.trial_config(trial["params"]))
        run_id = tracker.start_child(parent_id, name, trial["trial_id"], {
            **flatten(config), "fpa.continues_run": trial["run_id"]}, tags={
            "fpa.continues_run": trial["run_id"], "fpa.continues_checkpoint": origin, "fpa.continues_sweep": sweep})
        record = TrialRecord(trial["trial_id"], trial["optuna_trial"], run_id, trial["params"], metric)
        plans.append((record, {"train": config, "run_id": run_id, "trial_id": record.trial_id, "init_from": origin,
                               **context}))
        log.info("%s continues from %s (best %s %.4g) to step %d", record.trial_id, origin, metric.upper(),
                 trial["best_value"], steps)
    bridge = FixedTrials(plans, tracker, parent_id, metric)
    _fit(_new_tuner(settings, tune.with_resources(run_trial, resources), bridge, resources), bridge, settings, tracker,
         parent_id, resumable=False)
    bridge.close_out()
    return _finish(spec, settings, bridge, tracker, parent_id, finished["fid_calibrated"], finished.get("base"))


def _connect(settings: SweepSettings) -> dict[str, float]:
    """Ray, started or attached; the resources each trial takes: ``gpus_per_trial``, else a GPU where the
    cluster has them now. An autoscaling cluster with no GPU node up yet needs --gpus-per-trial 1, which
    asks the autoscaler for GPU nodes."""
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")  # trials share the launcher's working directory
    if not ray.is_initialized():
        # Without --address: the cluster a Ray Job runs on (RAY_ADDRESS), else a new local Ray; never a
        # cluster that some `ray start` on this machine left behind.
        address = settings.address or os.environ.get("RAY_ADDRESS") or "local"
        ray.init(address=address, include_dashboard=False, configure_logging=False)
    gpus = settings.gpus_per_trial
    if gpus is None:
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    resources = trial_resources(settings.cpus_per_trial, gpus)
    log.info("Ray cluster: %s; each trial takes %s", _describe_resources(ray.cluster_resources()), resources)
    return resources


def _tracker(settings: SweepSettings, tracking_uri: str, dataset: str) -> SweepTracker:
    return SweepTracker(tracking_uri, dataset, artifact_root=storage.join(settings.storage, "mlartifacts")
                        if storage.is_s3(settings.storage) and is_local_store(tracking_uri) else None)


def _start_parent(tracker: SweepTracker, settings: SweepSettings, spec: SweepSpec, resources: dict[str, float],
                  tags: dict[str, str] | None = None) -> str:
    parent_id = tracker.start_parent(settings.name, {
        **{f"sweep.{k}": v for k, v in settings.public().items()}, "sweep.dataset": spec.dataset,
        "sweep.resources": json.dumps(resources)}, spec.to_dict())
    for key, value in (tags or {}).items():
        tracker.client.set_tag(parent_id, key, value)
    return parent_id


def _trial_context(settings: SweepSettings, tracking_uri: str) -> dict[str, Any]:
    """What every trial needs besides its config."""
    return {"out_root": storage.join(settings.storage, settings.name), "tracking_uri": tracking_uri,
            "threads": max(1, int(settings.cpus_per_trial))}


def _new_tuner(settings: SweepSettings, trainable, bridge, resources: dict[str, float]) -> tune.Tuner:
    _keep_slots_busy(settings, resources)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=BridgeSearcher(bridge), scheduler=BridgeScheduler(bridge),
                                    num_samples=settings.num_trials, max_concurrent_trials=settings.max_concurrent,
                                    trial_name_creator=_trial_name, trial_dirname_creator=_trial_name,
                                    reuse_actors=True),
        run_config=tune.RunConfig(name=settings.name, **_ray_storage(settings.storage),
                                  failure_config=tune.FailureConfig(max_failures=settings.max_failures),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=2), verbose=1))


def _prepare_real_features(config, settings: SweepSettings, resources: dict[str, float]) -> None:
    """The real set's Inception features, once, before any trial: as a Ray task with one trial's GPUs (if
    any) and the CPUs of all the sweep's slots, which no trial uses yet. Without it the first trials would
    compute the same features at once, each on its own share of the machine."""
    cpus = min(ray.cluster_resources().get("CPU", 1), _slots(settings, resources) * resources.get("cpu", 1))
    task = ray.remote(_prepare_task).options(num_cpus=cpus, num_gpus=resources.get("gpu", 0))
    log.info("the real images' features (%s, %dx%d, %d-d), once for every trial", config.data.dataset,
             config.data.resolution, config.data.resolution, config.fid.dims)
    ray.get(task.remote(to_dict(config), storage.join(settings.storage, settings.name), max(1, int(cpus))))


def _prepare_task(config: dict[str, Any], out: str, threads: int) -> None:
    torch.set_num_threads(threads)
    prepare_real_features(build_config(config), out)


def _slots(settings: SweepSettings, resources: dict[str, float]) -> int:
    """How many trials run at once: as many as the cluster's resources hold, at most --max-concurrent."""
    cluster = ray.cluster_resources()
    fits = [cluster.get(key.upper(), 0) / amount for key, amount in resources.items() if amount]
    slots = max(1, int(min(fits))) if fits else 1
    return min(settings.max_concurrent or slots, slots)


def _keep_slots_busy(settings: SweepSettings, resources: dict[str, float]) -> None:
    """Let Ray Tune hold one suggested trial per slot, so that a slot that frees starts the next trial at once
    (with a custom searcher Tune holds one, so trials started one after another), and reuse the finished
    trial's worker process for it (no new interpreter, torch import and Inception weights each time)."""
    os.environ["TUNE_MAX_PENDING_TRIALS_PG"] = _USER_MAX_PENDING or str(_slots(settings, resources))


def _finish(spec: SweepSpec, settings: SweepSettings, bridge, tracker: SweepTracker, parent_id: str,
            calibrated: bool, base: dict[str, Any] | None) -> dict[str, Any]:
    summary = _summary(spec, settings, bridge, tracker.tracking_uri, parent_id, calibrated, base)
    _finish_parent(tracker, parent_id, spec, summary, bridge)
    summary_uri = storage.join(settings.storage, settings.name, "summary.json")
    storage.write_bytes(summary_uri, json.dumps(summary, indent=2).encode())
    _print_report(summary, summary_uri, tracker.tracking_uri)
    return summary


def _restored_tuner(settings: SweepSettings, trainable, bridge: OptunaBridge, resources: dict[str, float]
                    ) -> tune.Tuner:
    _keep_slots_busy(settings, resources)
    ray_storage = _ray_storage(settings.storage)
    path = storage.join(ray_storage["storage_path"], settings.name)
    if not tune.Tuner.can_restore(path, storage_filesystem=ray_storage.get("storage_filesystem")):
        raise ValueError(f"sweep {settings.name} has no Ray experiment state in {settings.storage} (its driver "
                         "died before Ray saved any); start it again under a new --name")
    tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=False,
                               restart_errored=False, storage_filesystem=ray_storage.get("storage_filesystem"))
    # Ray pickled the searcher and the scheduler into the run without their bridge (see BridgeSearcher);
    # a restored Tuner has no public way to take live objects, so this run's bridge is bound here.
    if tuner._local_tuner is None:
        raise ValueError("--resume needs a driver attached with --address auto or on the head, not a ray:// client")
    tune_config = tuner._local_tuner._tune_config
    tune_config.search_alg.bind(bridge)
    tune_config.scheduler.bind(bridge)
    return tuner


def _resolve_fid_backbone(spec: SweepSpec) -> SweepSpec:
    """``fid_backbone: auto`` (the demo): the calibrated Inception where its weights are, else the random one,
    said out loud. Otherwise a calibrated sweep without the weights stops here, before any trial."""
    backbone = spec.fid_backbone or spec.trial_config({}).fid.backbone
    if backbone == "inception-random":
        return spec.with_fixed({"fid": {"backbone": "inception-random"}})
    try:
        find_weights()
        return spec.with_fixed({"fid": {"backbone": "inception"}})
    except (FIDWeightsUnavailable, FIDWeightsInvalid) as e:
        if backbone != "auto":
            raise ValueError(f"{e}\nOr run the sweep uncalibrated: --set fid.backbone=inception-random") from None
    print("No FID Inception weights on this machine: this sweep's FIDs use the uncalibrated inception-random "
          "backbone (comparable with each other, not with published FIDs).", flush=True)
    return spec.with_fixed({"fid": {"backbone": "inception-random"}})


def _trial_name(trial) -> str:
    return trial.config["trial_id"]  # trial_<Optuna number>, from the searcher


def _default_optuna_storage(settings: SweepSettings) -> str:
    folder = Path(settings.storage, settings.name) if not storage.is_s3(settings.storage) else \
        Path("sweeps_out", settings.name).resolve()  # SQLite needs a local file
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'optuna.db'}"


def _ray_storage(location: str) -> dict[str, Any]:
    if not storage.is_s3(location):
        return {"storage_path": location}
    import pyarrow.fs

    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    filesystem = pyarrow.fs.S3FileSystem(endpoint_override=endpoint, scheme=endpoint.split("://")[0]) \
        if endpoint else pyarrow.fs.S3FileSystem()
    return {"storage_path": location[len("s3://"):], "storage_filesystem": filesystem}


def _describe_resources(resources: dict[str, float]) -> str:
    return ", ".join(f"{resources.get(k, 0):g} {k}" for k in ("CPU", "GPU")) + f", {len(ray.nodes())} node(s)"


def _summary(spec: SweepSpec, settings: SweepSettings, bridge: OptunaBridge, tracking_uri: str, parent_id: str,
             calibrated: bool, base: dict[str, Any] | None = None) -> dict[str, Any]:
    trials = []
    for record in sorted(bridge.records.values(), key=lambda r: r.number):
        best = record.best or {}
        trials.append({"trial_id": record.trial_id, "optuna_trial": record.number,
                       "state": "RUNNING" if record.state == "RUNNING" else record.state, "steps": record.steps,
                       "best_value": record.best_value, "best_fid": best.get("fid"), "best_kid": best.get("kid"),
                       "run_id": record.run_id, "params": record.params, "fids": record.fids,
                       "evaluations": record.evaluations, **record.placement})
    finished = [r for r in bridge.records.values() if r.best is not None and r.state in ("COMPLETE", "PRUNED")]
    best = None
    if finished:
        winner = min(finished, key=lambda r: r.best_value)
        trial_out = storage.join(settings.storage, settings.name, "trials", winner.trial_id)
        best = {"trial_id": winner.trial_id, "value": winner.best_value, "fid": winner.best_fid,
                "kid": winner.best.get("kid"), "step": winner.best["step"], "run_id": winner.run_id,
                "params": winner.params, "config": to_dict(spec.trial_config(winner.params)),
                "checkpoint": storage.join(trial_out, "checkpoints", "best.pt")}
    return {"name": settings.name, "dataset": spec.dataset, "tracking_uri": redact(tracking_uri),
            "parent_run_id": parent_id, "metric": bridge.metric, "fid_calibrated": calibrated,
            "settings": settings.public(),
            "stage": settings.stage, "base": base, "best": best, "trials": trials}


def _finish_parent(tracker: SweepTracker, parent_id: str, spec: SweepSpec, summary: dict[str, Any],
                   bridge: OptunaBridge) -> None:
    if summary["best"]:
        tracker.log_text(parent_id, yaml.safe_dump(summary["best"]["config"], sort_keys=False), "best_config.yaml")
        tracker.client.set_tag(parent_id, "fpa.best_trial", summary["best"]["trial_id"])
    metric = bridge.metric
    curves = {f"{r.trial_id} ({r.state.lower()})": [(e["step"], e[metric]) for e in r.evaluations if metric in e]
              for r in bridge.records.values()}
    png = plot_fid_curves(curves, f"{summary['name']}: {metric.upper()} against step", metric.upper())
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder, f"{metric}_vs_step.png")
        path.write_bytes(png)
        tracker.log_file(parent_id, str(path))
    tracker.log_text(parent_id, json.dumps(summary, indent=2), "summary.json")
    tracker.client.set_terminated(parent_id, "FINISHED" if summary["best"] else "FAILED")


def _cell(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _print_report(summary: dict[str, Any], summary_uri: str, tracking_uri: str) -> None:
    keys = [k for k in KEY_PARAMS if any(k in t["params"] for t in summary["trials"])]
    rows = [("trial", "state", "steps", "FID", "KID", *[k.split(".")[-1] for k in keys])]
    for t in summary["trials"]:
        fid = "-" if t["best_fid"] is None else f"{t['best_fid']:.2f}"
        kid = "-" if t["best_kid"] is None else f"{t['best_kid']:.4f}"
        rows.append((t["trial_id"], t["state"], str(t["steps"]), fid, kid,
                     *[_cell(t["params"].get(k, "")) for k in keys]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print()
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    label = "FID" if summary["fid_calibrated"] else "FID (uncalibrated: inception-random)"
    if summary.get("base"):
        base_fid = summary["base"]["fid"]
        print(f"\nbase FPA: {summary['base']['source']}, {label} "
              f"{'-' if base_fid is None else f'{base_fid:.3f}'} (the U-Net trials refine its output)")
    if summary["best"]:
        best = summary["best"]
        kid = "-" if best["kid"] is None else f"{best['kid']:.4f}"
        print(f"\nbest by {summary['metric'].upper()}: {best['trial_id']} at step {best['step']}, {label} "
              f"{best['fid']:.3f}, KID {kid}, checkpoint {best['checkpoint']}")
        print("best config:\n" + yaml.safe_dump(best["params"], sort_keys=False).rstrip())
    else:
        print("\nno trial reached an FID evaluation")
    print(f"\nsummary: {summary_uri}")
    print(f"MLflow: {ui_command(tracking_uri)}  (experiment fpa-{summary['dataset']}, run {summary['name']})")
