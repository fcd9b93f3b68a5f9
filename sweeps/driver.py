"""The sweep driver: a new sweep, a resumed one and the continuation of a finished one's best trials, each
from its settings to its summary. What each outside system does is elsewhere: the stores and the sweep's
folder in ``sweeps.sweep``, Ray Tune in ``sweeps.ray_tune``, the Optuna study in ``sweeps.study``, MLflow in
``sweeps.tracking``, the trials' records in ``sweeps.trials``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import yaml

from fpa_core import checkpoint, storage
from fpa_core.config import flatten, to_dict
from fpa_core.metrics.noise import Z, Noisy, tied_with_best
from fpa_core.metrics.weights import FIDWeightsInvalid, FIDWeightsUnavailable, find_weights
from fpa_core.unet import fpa_of
from sweeps import ablation, preflight, ray_tune, simulation
from sweeps.registry import download_model, model_name
from sweeps.retention import Retention
from sweeps.space import SweepSpec
from sweeps.sweep_file import spec_from_dict
from sweeps.study import OptunaBridge, check_record, driving, keep_record_digest, open_store, open_study
from sweeps.overview import DRIVER_SECONDS
from sweeps.sweep import (SweepError, SweepInterrupted, SweepSettings, read_record, read_summary, record_digest,
                          recorded_settings, redact, sweep_folder, trial_folder, write_record,
                          write_summary)
from sweeps.tracking import SweepTracker, experiment_url, ui_command
from sweeps.trials import FixedTrials, TrialBook, TrialRecord, usage

log = logging.getLogger(__name__)

KEY_PARAMS = ("model.input_generator", "model.d_latent", "model.d_hidden", "model.num_layers", "model.d_in",
              "model.d_in_proj", "model.rule", "model.steps", "data.range", "optim.lr", "unet.dim", "unet.blocks",
              "seed")  # where sampled


def run_sweep(spec: SweepSpec, settings: SweepSettings) -> dict[str, Any]:
    """Run a new sweep to its end; returns (and writes) its summary. A sweep that cannot run raises SweepError
    before anything is written: its name, dataset, stores and flags (``sweeps.preflight``), then the FID
    Inception's weights, then what its trials would take once Ray is up."""
    found = preflight.problems(spec, settings)
    if found:
        raise SweepError(found)
    if not settings.simulate:  # a simulated trial computes no score: it needs no Inception weights
        spec = _resolve_fid_backbone(spec)
    spec = spec.with_fixed({"fid": {"metric": settings.metric}})
    resources = ray_tune.connect(settings)
    _check_budget(settings, resources)
    base = None
    if settings.stage == "unet":
        spec, base = _unet_stage(spec, settings)
    digest = write_record(settings, spec.to_dict(), base)  # what --resume needs, the stores without credentials
    return _run(spec, settings, resources, resume=False, base=base, digest=digest)


def _check_budget(settings: SweepSettings, resources: dict[str, float]) -> None:
    if settings.budget_gpu_hours is not None and not resources.get("gpu"):
        raise SweepError("--budget-gpu-hours: the trials take no GPU on this cluster, so they use no GPU-hours and "
                         "the budget would never stop the sweep; use --budget-cpu-hours, or --gpus-per-trial")


def _unet_stage(spec: SweepSpec, settings: SweepSettings) -> tuple[SweepSpec, dict[str, Any]]:
    """The frozen FPA of a U-Net sweep: copied into the sweep's folder (every trial, on any node, reads it
    there), its model section fixed in every trial, its FID kept to show beside the U-Net's."""
    source = settings.base or "champion"
    if source == "champion":
        source = f"models:/{model_name(spec.dataset)}@champion"
    try:
        state = checkpoint.load(download_model(source, settings.tracking_uri) if source.startswith("models:/")
                                else source)
    except (ValueError, FileNotFoundError) as e:  # no such model, alias or file; not a checkpoint
        raise SweepError(f"--base {settings.base or 'champion'}: {e}") from None
    if state["config"].get("stage", "fpa") == "unet":  # a refined champion: refine its FPA anew
        log.info("--base %s is an FPA with a U-Net; the new U-Nets refine its FPA", source)
        state = fpa_of(state)
    uri = storage.join(settings.folder, "base", "generator.pt")
    checkpoint.save(uri, checkpoint.stage_base(state))  # with the raw G and D where the checkpoint has them
    scores = next((e for e in state["evaluations"] if e["step"] == state["step"]), {})
    base = {"source": source, "uri": uri, "step": state["step"], "fid": scores.get("fid"), "kid": scores.get("kid"),
            "fid_calibrated": state["fid_calibrated"]}
    log.info("U-Net stage on %s (step %d, FID %s)", source, base["step"], base["fid"])
    fixed = {"stage": "unet", "base_generator": uri, "unet.channels": state["config"]["model"].get("channels", 3),
             "loss.hinge_weight": 0.5,  # as the authors' U-Net stage
             **{f"model.{key}": value for key, value in state["config"]["model"].items()}}
    return spec.with_fixed(fixed), base


def resume_sweep(name: str, storage_root: str, *, tracking_uri: str | None = None,
                 optuna_storage: str | None = None, address: str | None = None,
                 budget_gpu_hours: float | None = None, budget_cpu_hours: float | None = None) -> dict[str, Any]:
    """Continue a sweep whose driver died: finished trials stay, running ones continue from their
    checkpoints, pending ones start, all in their MLflow runs and Optuna trials. The stores are the
    ones the sweep was started with unless given (a URL with credentials was recorded without them)."""
    saved = read_record(storage_root, name)
    budgets = {"budget_gpu_hours": budget_gpu_hours, "budget_cpu_hours": budget_cpu_hours}
    settings = recorded_settings(saved, storage_root, tracking_uri=tracking_uri, optuna_storage=optuna_storage,
                                 address=address, **{k: v for k, v in budgets.items() if v is not None})
    found = preflight.store_problems(settings)
    if found:
        raise SweepError(found)
    check_record(settings, record_digest(saved))
    resources = ray_tune.connect(settings)
    _check_budget(settings, resources)
    return _run(spec_from_dict(saved["spec"]), settings, resources, resume=True, base=saved.get("base"))


def _run(spec: SweepSpec, settings: SweepSettings, resources: dict[str, float], resume: bool,
         base: dict[str, Any] | None = None, digest: str | None = None) -> dict[str, Any]:
    """A sweep from its first (or, resumed, its next) trial to its summary."""
    config = spec.trial_config({})
    tracker = SweepTracker.for_sweep(settings, spec.dataset)
    if resume:
        parent_id = tracker.resume_sweep(settings.name)
        if parent_id is None:
            raise SweepError(f"sweep {settings.name} has no parent run in the MLflow store "
                             f"{redact(settings.tracking_uri)}; pass the --tracking-uri it ran with")
    else:
        parent_id = tracker.start_sweep(settings, spec.dataset, resources, spec.to_dict(),
                                        {"fpa.simulated": settings.simulate} if settings.simulate else None)
        if base is not None and base["fid"] is not None:  # the FPA's FID beside the U-Net's
            tracker.log_metric(parent_id, "base_fid", base["fid"], base["step"])
    store = open_store(settings)
    study = open_study(spec, settings, config, store)
    if digest is not None:
        keep_record_digest(study, digest)

    if not settings.simulate:  # the real images' features, once for every trial
        ray_tune.prepare_real_features(config, settings, resources)
    bridge = OptunaBridge(spec, study, store, tracker, parent_id, settings, resources, config,
                          simulation.simulator(settings, settings.storage))
    bridge.retention = None if settings.simulate else Retention(settings.folder, settings.keep_full)
    if resume:
        bridge.reconcile()  # the sweep so far, as its study holds it
    with driving(study, resources):  # the study names this driver while it runs, and sums the drivers' time
        _run_trials(settings, bridge, resources, tracker)
    return _finish(spec, settings, bridge, tracker, config.fid.backbone == "inception", base,
                   wall_s=study.user_attrs[DRIVER_SECONDS], resources=resources)


def _run_trials(settings: SweepSettings, bridge: TrialBook, resources: dict[str, float], tracker: SweepTracker,
                resumable: bool = True) -> None:
    """Run the trials that have not ended. Interrupted (Ctrl-C or SIGTERM: Ray stops its trials without
    ending them): the trials stay RUNNING in Optuna and MLflow for --resume, the parent run is KILLED until
    then. At the end, a trial still RUNNING (its Ray trial lost for good) fails."""
    try:
        ray_tune.run_trials(settings, bridge, resources, bridge.to_run(settings.num_trials))
        if bridge.interrupted():
            tracker.sweep_interrupted(bridge.parent_id)
            raise SweepInterrupted(settings.name, resumable)
        bridge.close_out()
    finally:
        if bridge.retention is not None:  # the trims decided, done before the driver returns
            bridge.retention.finish(bridge.records.values())


def continue_sweep(sweep: str, storage_root: str, *, top_k: int | None, steps: int, start: str = "best",
                   name: str | None = None, tracking_uri: str | None = None, address: str | None = None,
                   cpus_per_trial: float = 1.0, max_concurrent: int | None = None) -> dict[str, Any]:
    """Continue the ``top_k`` best trials of a finished sweep (None: those within noise of its best, as its
    summary's ``tied`` names them; the best 3 where it names none), each from its best (``start="best"``) or
    latest checkpoint, to ``steps`` training steps, unpruned, as one new Ray Tune run. Each continuation logs
    into a new MLflow child run linked to the trial's own (tag and param ``fpa.continues_run``)."""
    finished = read_summary(storage_root, sweep)
    saved = read_record(storage_root, sweep)
    if finished.get("simulated"):
        raise SweepError(f"sweep {sweep} was simulated (--simulate {finished['simulated']['source']}): its trials "
                         "trained nothing, and have no checkpoints to continue from")
    metric = finished["metric"]
    picked = continued_trials(finished, top_k)
    if not picked:
        raise SweepError(f"sweep {sweep} has no trial with an evaluation to continue from")
    top_k = len(picked)
    trimmed = [t["trial_id"] for t in picked if t.get("kept") == "generator"]
    if trimmed:
        raise SweepError(f"--top-k {top_k} reaches {', '.join(trimmed)}, which sweep {sweep} trimmed to its generator "
                         f"(it ended outside the best {saved['settings'].get('keep_full', 3)} that keep every "
                         "checkpoint, --keep-full): a run continues only from its full state; continue fewer trials, "
                         "or run the sweep again with a larger --keep-full")
    if steps <= max(t["steps"] for t in picked):
        raise SweepError(f"--steps {steps} does not go beyond the trials' {max(t['steps'] for t in picked)} steps")
    name = name or f"{sweep}-continued-{time.strftime('%Y%m%d-%H%M%S')}"
    if storage.exists(sweep_folder(storage_root, name)):
        raise SweepError(f"{sweep_folder(storage_root, name)} already exists; choose another --name")
    settings = recorded_settings(saved, storage_root, tracking_uri=tracking_uri, name=name, num_trials=len(picked),
                                 pruner="none", address=address, cpus_per_trial=cpus_per_trial,
                                 max_concurrent=max_concurrent)
    spec = spec_from_dict(saved["spec"]).with_fixed({"steps": steps})
    resources = ray_tune.connect(settings)
    tracker = SweepTracker.for_sweep(settings, spec.dataset)
    parent_id = tracker.start_sweep(settings, spec.dataset, resources, spec.to_dict(), {"fpa.continues_sweep": sweep})

    records = []
    for trial in picked:
        folder = storage.join(trial_folder(sweep_folder(storage_root, sweep), trial["trial_id"]), "checkpoints")
        latest = checkpoint.latest_checkpoints(folder)
        origin = storage.join(folder, "best.pt") if start == "best" or not latest else latest[-1][1]
        config = spec.trial_config(trial["params"])
        run_id = tracker.start_child(parent_id, name, trial["trial_id"], {
            **flatten(config), "fpa.continues_run": trial["run_id"]}, tags={
            "fpa.continues_run": trial["run_id"], "fpa.continues_checkpoint": origin, "fpa.continues_sweep": sweep})
        records.append(TrialRecord(trial["trial_id"], trial["optuna_trial"], run_id, trial["params"], config, metric,
                                   init_from=origin))
        log.info("%s continues from %s (best %s %.4g) to step %d", trial["trial_id"], origin, metric.upper(),
                 trial["best_value"], steps)
    bridge = FixedTrials(records, tracker, parent_id, metric, settings, resources)
    bridge.retention = Retention(settings.folder, settings.keep_full)
    started = time.monotonic()
    _run_trials(settings, bridge, resources, tracker, resumable=False)
    return _finish(spec, settings, bridge, tracker, finished["fid_calibrated"], finished.get("base"),
                   wall_s=time.monotonic() - started, resources=resources)


def continued_trials(summary: dict[str, Any], top_k: int | None) -> list[dict[str, Any]]:
    """A finished sweep's trials to continue, best first: its ``top_k`` best, or with None those its summary
    names within noise of the best (``tied``), or its best 3 where it names none (an FID sweep)."""
    ranked = sorted((t for t in summary["trials"] if t["best_value"] is not None), key=lambda t: t["best_value"])
    tied = summary.get("tied") or {}
    if top_k is None:
        top_k = len(tied["trials"]) if tied.get("noise") else 3
        log.info("continuing the %d %s", top_k, "trial(s) within noise of the best" if tied.get("noise") else "best")
    return ranked[:top_k]


def _finish(spec: SweepSpec, settings: SweepSettings, bridge: TrialBook, tracker: SweepTracker, calibrated: bool,
            base: dict[str, Any] | None, wall_s: float, resources: dict[str, float]) -> dict[str, Any]:
    summary = _summary(spec, settings, bridge, calibrated, base)
    summary["cost"] = {"wall_hours": wall_s / 3600, **usage(list(bridge.records.values()), resources),
                       "resources_per_trial": resources}
    files = {}
    if spec.grid is not None:  # an ablation: its table and plot, in the sweep's folder and the parent run
        summary["ablation"] = ablation.results(spec, summary["trials"])
        centre = ablation.centre_values(spec)
        files = {"ablation.md": ablation.markdown(summary["ablation"], centre).encode(),
                 "ablation.png": ablation.plot(summary["ablation"], centre, f"{settings.name}: FID and KID "
                                               f"against each axis (mean ± std over {spec.seeds} seeds)")}
        for name, data in files.items():
            storage.write_bytes(storage.join(settings.folder, name), data)
    summary["mlflow_url"] = experiment_url(settings.tracking_uri, tracker.experiment_id)
    summary_uri = write_summary(settings, summary)  # first: an MLflow failure below loses nothing
    metric = bridge.metric
    try:
        tracker.finish_sweep(bridge.parent_id, summary, {
            f"{r.trial_id} ({r.state.lower()})": [(e["step"], e[metric]) for e in r.evaluations if metric in e]
            for r in bridge.records.values()}, files)
    except Exception as e:  # MLflow down at the very end: the sweep's results are in summary.json all the same
        log.error("MLflow could not close the sweep's parent run (%s: %s); the summary is in %s",
                  type(e).__name__, e, summary_uri)
    _print_report(summary, summary_uri, settings.tracking_uri)
    if files:
        print("\n" + files["ablation.md"].decode())
        print(f"ablation: {storage.join(settings.folder, 'ablation.md')}, "
              f"{storage.join(settings.folder, 'ablation.png')}")
    return summary


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
            raise SweepError(f"{e}\nOr run the sweep uncalibrated: --set fid.backbone=inception-random") from None
    print("No FID Inception weights on this machine: this sweep's FIDs use the uncalibrated inception-random "
          "backbone (comparable with each other, not with published FIDs).", flush=True)
    return spec.with_fixed({"fid": {"backbone": "inception-random"}})


def _summary(spec: SweepSpec, settings: SweepSettings, bridge: TrialBook, calibrated: bool,
             base: dict[str, Any] | None = None) -> dict[str, Any]:
    trials = []
    for record in sorted(bridge.records.values(), key=lambda r: r.number):
        trials.append({"trial_id": record.trial_id, "optuna_trial": record.number, "state": record.state,
                       "steps": record.steps, "best_value": record.best_value, "best": record.best,
                       "kept": None if settings.simulate else "generator" if record.trimmed else "full",
                       "run_id": record.run_id, "params": record.params,
                       "evaluations": record.evaluations, "error": record.error, "seconds": record.seconds,
                       **record.placement})
    finished = [r for r in bridge.records.values() if r.best is not None and r.state in ("COMPLETE", "PRUNED")]
    best = None
    if finished:
        winner = min(finished, key=lambda r: r.best_value)
        trial_out = trial_folder(settings.folder, winner.trial_id)
        best = {"trial_id": winner.trial_id, "value": winner.best_value, "fid": winner.best.get("fid"),
                "kid": winner.best.get("kid"), "step": winner.best["step"], "run_id": winner.run_id,
                "params": winner.params, "config": to_dict(winner.config),
                "checkpoint": None if settings.simulate else storage.join(trial_out, "checkpoints", "best.pt")}
    return {"name": settings.name, "dataset": spec.dataset, "tracking_uri": redact(settings.tracking_uri),
            "parent_run_id": bridge.parent_id, "metric": bridge.metric, "fid_calibrated": calibrated,
            "settings": settings.public(),
            "simulated": {"source": settings.simulate, "step_seconds": settings.step_seconds}
            if settings.simulate else None,
            "stage": settings.stage, "base": base, "best": best, "tied": _tied(finished, bridge.metric),
            "trials": trials}


def _tied(finished: list[TrialRecord], metric: str) -> dict[str, Any] | None:
    """The trials whose best is within noise of the sweep's best (``fpa_core.metrics.noise``), best first: on
    KID, each evaluation's std over its subsets; FID has no std of its own, so an FID sweep names its best only."""
    if not finished:
        return None
    if metric != "kid":
        best = min(finished, key=lambda r: r.best_value)
        return {"trials": [best.trial_id], "noise": None, "z": None,
                "why": "FID evaluations carry no std: within-noise ties are told on KID (--metric kid)"}
    scores = [Noisy(r.best_value, r.best.get("kid_std") or 0.0, "KID std over subsets") for r in finished]
    return {"trials": [finished[i].trial_id for i in tied_with_best(scores)], "noise": "KID std over subsets",
            "z": Z}


def _cell(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _print_report(summary: dict[str, Any], summary_uri: str, tracking_uri: str) -> None:
    keys = [k for k in KEY_PARAMS if any(k in t["params"] for t in summary["trials"])]
    rows = [("trial", "state", "steps", "FID", "KID", *[k.split(".")[-1] for k in keys])]
    for t in summary["trials"]:
        best = t["best"] or {}
        fid = "-" if best.get("fid") is None else f"{best['fid']:.2f}"
        kid = "-" if best.get("kid") is None else f"{best['kid']:.4f}"
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
              f"{best['fid']:.3f}, KID {kid}" + (f", checkpoint {best['checkpoint']}" if best["checkpoint"] else ""))
        tied = summary.get("tied") or {}
        others = [t for t in tied.get("trials", []) if t != best["trial_id"]]
        if tied.get("noise"):
            print(f"within noise of it ({tied['noise']}, {tied['z']:g} std of the difference): "
                  + (", ".join(others) if others else "no other trial"))
        print("best config:\n" + yaml.safe_dump(best["params"], sort_keys=False).rstrip())
    else:
        print("\nno trial reached an FID evaluation")
    if summary.get("simulated"):
        print(f"\nSIMULATED (--simulate {summary['simulated']['source']}): no trial trained; every score above is "
              "replayed, not measured")
    cost = summary["cost"]
    print(f"\ncost: {cost['trial_hours']:.3g} trial-hours, {cost['gpu_hours']:.3g} GPU-hours, {cost['cpu_hours']:.3g} "
          f"CPU-hours; {cost['wall_hours']:.3g} h wall time")
    print(f"\nsummary: {summary_uri}")
    command = ui_command(tracking_uri)
    print(f"MLflow: {command + ', then ' if command else ''}open {summary['mlflow_url']}  (experiment "
          f"fpa-{summary['dataset']}, parent run {summary['name']})")
