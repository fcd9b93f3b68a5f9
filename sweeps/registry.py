"""Champion generators in the MLflow model registry: one registered model per dataset, ``fpa-<dataset>``.

A version holds a checkpoint's EMA generator (``fpa_core.checkpoint.generator_only``), logged as an
artifact of the run that trained it. The alias ``champion`` names the best version, ``previous-champion``
the one it replaced (aliases, not the deprecated stages). Two versions are compared on the run's metric
(FID or KID) only when it was measured the same way (the ``fpa.protocol`` tag: Inception weights, feature
size, image format, image count, precision, dataset and resolution); a calibrated and an uncalibrated FID
never are. And a candidate replaces the champion only when it is better by more than the noise of that
comparison (``fpa_core.metrics.noise``): each version's one-evaluation std under its protocol is measured when
it is registered, over fresh latent seeds (``fpa.noise_std``), and the test is recorded (``fpa.margin``).
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import yaml
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from fpa_core import checkpoint
from fpa_core.metrics import SCORES
from fpa_core.metrics.noise import NOISE_SEEDS, Noisy, compare, spread
from fpa_core.metrics.protocol import evaluate_checkpoint
from sweeps.sweep import redact, resolve_tracking_uri
from sweeps.tracking import _slug

log = logging.getLogger(__name__)

CHAMPION, PREVIOUS = "champion", "previous-champion"


def model_name(dataset: str) -> str:
    """fpa-metfaces; a dataset given as a folder or zip is named after its file name."""
    return "fpa-" + _slug(Path(dataset).stem if ("/" in dataset or dataset.endswith(".zip")) else dataset)


def training_protocol(state: dict[str, Any]) -> dict[str, Any]:
    """How a checkpoint's own (periodic) scores were measured: what makes two of them comparable."""
    fid = state["config"]["fid"]
    return {"backbone": fid["backbone"], "calibrated": bool(state["fid_calibrated"]),
            "weights_sha256": state.get("fid_weights"), "dims": fid["dims"], "image_format": fid["image_format"],
            "num_images": fid["num_images"], "precision": "fp32", "dataset": state["dataset"]["name"],
            "dataset_fingerprint": state["dataset"]["fingerprint"], "resolution": state["config"]["data"]["resolution"]}


def protocol_tag(protocol: dict[str, Any], metric: str) -> str:
    """The comparable part of a protocol and the metric compared, as a canonical JSON string (a version tag)."""
    keys = ("backbone", "calibrated", "weights_sha256", "dims", "image_format", "num_images", "precision",
            "dataset", "dataset_fingerprint", "resolution")
    return json.dumps({**{k: protocol.get(k) for k in keys}, "metric": metric}, sort_keys=True)


@dataclass
class Promotion:
    """What ``promote`` did: ``version`` registered (None when nothing was), and whether it is champion now."""

    model: str
    version: int | None
    champion: bool
    reason: str
    previous: int | None = None  # the former champion, now previous-champion
    tags: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        if self.version is None:
            return f"nothing to promote: {self.reason}"
        head = f"registered {self.model} version {self.version}"
        if not self.champion:
            return f"{head}; champion unchanged: {self.reason}"
        after = f"; version {self.previous} is now {PREVIOUS}" if self.previous else ""
        return f"{head}; it is now {CHAMPION} ({self.reason}){after}"


def promote(checkpoint_uri: str, run_id: str, tracking_uri: str | None = None, *, sweep: str | None = None,
            force: bool = False, evaluate: int | None = None, noise_seeds: int = NOISE_SEEDS) -> Promotion:
    """Register the EMA generator of ``checkpoint_uri`` (trained in MLflow run ``run_id``) and make it the
    champion if it beats the current champion on the run's metric (fid.metric) under the same protocol by more
    than the comparison's noise, or ``force``. ``evaluate``: score it first as the paper did (fpa_core.evaluate,
    that many images), not by the scores its run logged. ``noise_seeds``: how many fresh latent seeds measure
    the candidate's noise under that protocol (0: KID's std over its subsets, for a KID sweep)."""
    if noise_seeds == 1 or noise_seeds < 0:
        raise ValueError(f"--noise-seeds must be 0 (KID's own std) or at least 2, got {noise_seeds}")
    client = MlflowClient(tracking_uri or resolve_tracking_uri())
    simulated = client.get_run(run_id).data.tags.get("fpa.simulated")
    if simulated:  # a replayed curve is no result: it never becomes a registered model, let alone a champion
        raise ValueError(f"run {run_id} is a simulated trial (--simulate {simulated}): it trained nothing and is "
                         "never promoted; promote a trial of a real sweep")
    state = checkpoint.load(checkpoint_uri)
    config, step = state["config"], int(state["step"])
    metric = config["fid"].get("metric", "fid")
    name = model_name(config["data"]["dataset"])
    if evaluate:
        record = evaluate_checkpoint(state, num_images=evaluate, source=checkpoint_uri)
        scores, protocol = record["scores"], record["protocol"]
    else:
        scores = next((e for e in state["evaluations"] if e["step"] == step), None)
        protocol = training_protocol(state)
        if scores is None or scores.get(metric) is None:
            return Promotion(name, None, False, f"{checkpoint_uri} has no {metric.upper()} at its step {step}")
    if noise_seeds == 0 and (metric != "kid" or scores.get("kid_std") is None):
        raise ValueError(f"{metric.upper()} has no standard deviation of its own: measure its noise with "
                         "--noise-seeds N (N >= 2 fresh latent seeds), or promote it anyway with --force")
    value, measured = float(scores[metric]), protocol_tag(protocol, metric)
    for version in _versions_of_run(client, name, run_id):
        if version.tags.get("fpa.checkpoint") == checkpoint_uri and version.tags.get("fpa.step") == str(step) \
                and version.tags.get("fpa.protocol") == measured:
            current = _by_alias(client, name, CHAMPION)
            if force and (current is None or current.version != version.version):
                previous = _move_champion(client, name, version.version, current)
                return Promotion(name, int(version.version), True, "--force, an already registered version",
                                 previous)
            return Promotion(name, None, False, f"version {version.version} of {name} already holds this checkpoint "
                                                f"(run {run_id}, step {step}), measured the same way")

    noise = _noise(state, scores, protocol, metric, noise_seeds, checkpoint_uri)
    tags = {"fpa.metric": metric, "fpa.value": repr(value), "fpa.step": str(step), "fpa.protocol": measured,
            "fpa.noise_std": repr(noise.std), "fpa.noise": noise.source,
            **{f"fpa.{k}": repr(float(scores[k])) for k in SCORES if scores.get(k) is not None},
            "fpa.fid_calibrated": str(bool(protocol["calibrated"])).lower(), "fpa.checkpoint": checkpoint_uri,
            "fpa.sweep": sweep or "", "fpa.stage": config.get("stage", "fpa"),
            "fpa.config": json.dumps(config, sort_keys=True, separators=(",", ":"))}
    source = _log_generator(client, run_id, state, step)
    _ensure_model(client, name)
    version = client.create_model_version(name, source=source, run_id=run_id, tags=tags)
    current = _by_alias(client, name, CHAMPION)
    label = metric.upper()

    if current is None:
        move, reason = True, "the first champion"
    elif force:
        move, reason = True, f"--force, over version {current.version}"
    elif current.tags.get("fpa.protocol") != measured:
        move, reason = False, (f"its {label} was not measured like champion version {current.version}'s "
                               f"({_difference(current.tags.get('fpa.protocol'), measured)}); "
                               "use --evaluate N on both, or --force to promote it anyway")
    elif "fpa.value" not in current.tags:
        move, reason = False, f"champion version {current.version} has no fpa.value tag to compare with; use --force"
    else:
        held = float(current.tags["fpa.value"])
        # A champion registered without a measured noise is taken to have the candidate's: the same protocol.
        incumbent = Noisy(held, float(current.tags.get("fpa.noise_std", noise.std)),
                          current.tags.get("fpa.noise", "the candidate's (none recorded)"))
        comparison = compare(noise, incumbent)
        test = comparison.describe(label)
        client.set_model_version_tag(name, version.version, "fpa.margin", repr(comparison.margin))
        client.set_model_version_tag(name, version.version, "fpa.test", f"against version {current.version}: {test}")
        if comparison.better:
            move, reason = True, f"{label} {value:.4g} beats version {current.version}'s {held:.4g}: {test}"
        else:
            move, reason = False, (f"its {label} {value:.4g} does not beat version {current.version}'s {held:.4g}: "
                                   f"{test}; --force to promote it anyway")
    previous = _move_champion(client, name, version.version, current) if move else None
    return Promotion(name, int(version.version), move, reason, previous, tags)


def _noise(state: dict[str, Any], scores: dict[str, Any], protocol: dict[str, Any], metric: str, seeds: int,
           source: str) -> Noisy:
    """The candidate's ``metric`` with the std of one evaluation under ``protocol``: over ``seeds`` fresh latent
    seeds (the run's seed + 1, + 2, ...), or, with 0, KID's std over its subsets."""
    value = float(scores[metric])
    if seeds == 0:
        return Noisy(value, float(scores["kid_std"]), "KID std over subsets")
    first = state["config"]["seed"] if protocol.get("latent_seed") is None else protocol["latent_seed"]
    repeats = [evaluate_checkpoint(state, num_images=protocol["num_images"], dims=protocol["dims"],
                                   backbone=protocol["backbone"], image_format=protocol["image_format"],
                                   seed=first + k, source=source)["scores"][metric] for k in range(1, seeds + 1)]
    log.info("%s's noise: %s over %d fresh latent seeds %s", source, metric.upper(), seeds, repeats)
    return spread(value, repeats, f"std over {seeds} fresh latent seeds")


def _move_champion(client: MlflowClient, name: str, version, current) -> int | None:
    """champion -> ``version``; the former champion, if any, keeps previous-champion. Returns its number."""
    if current is not None:
        client.set_registered_model_alias(name, PREVIOUS, current.version)
    client.set_registered_model_alias(name, CHAMPION, version)
    return int(current.version) if current is not None else None


def download_model(uri: str, tracking_uri: str | None = None) -> str:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` -> the local path of its generator file.
    Registered as fpa_core's resolver of models:/ URIs (pyproject entry point)."""
    client = MlflowClient(tracking_uri or resolve_tracking_uri())
    reference = uri[len("models:/"):]
    try:
        if "@" in reference:
            name, alias = reference.split("@", 1)
            version = client.get_model_version_by_alias(name, alias)
        else:
            name, number = reference.rsplit("/", 1)
            version = client.get_model_version(name, number)
    except (MlflowException, ValueError) as e:
        raise ValueError(f"{uri}: no such registered model version in {redact(client.tracking_uri)} ({e}); "
                         "promote one with fpa-promote --sweep NAME") from None
    folder = mlflow.artifacts.download_artifacts(artifact_uri=version.source, tracking_uri=client.tracking_uri)
    return str(Path(folder, "generator.pt"))


def _log_generator(client: MlflowClient, run_id: str, state: dict[str, Any], step: int) -> str:
    path = f"generator-step{step:08d}"
    with tempfile.TemporaryDirectory() as folder:
        checkpoint.save(str(Path(folder, "generator.pt")), checkpoint.generator_only(state))
        Path(folder, "config.yaml").write_text(yaml.safe_dump(state["config"], sort_keys=False))
        client.log_artifacts(run_id, folder, path)
    return f"runs:/{run_id}/{path}"


def _ensure_model(client: MlflowClient, name: str) -> None:
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="Fast Weight Painter generators; alias champion is the "
                                                         "best by FID, previous-champion the one it replaced")


def _by_alias(client: MlflowClient, name: str, alias: str):
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def _versions_of_run(client: MlflowClient, name: str, run_id: str) -> list:
    try:
        return client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    except MlflowException:
        return []


def _difference(old: str | None, new: str) -> str:
    if old is None:
        return "the champion has no protocol recorded"
    before, after = json.loads(old), json.loads(new)
    return ", ".join(f"{k} {before.get(k)!r} vs {after.get(k)!r}" for k in sorted(after) if before.get(k) != after[k])
