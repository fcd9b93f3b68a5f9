"""Ray Tune: connecting to Ray, the resources of a trial and how many run at once, and the Tuner that runs a
sweep's trials, new or restored, with a searcher and a scheduler that ask the sweep's trial book
(``sweeps.study.OptunaBridge`` or ``sweeps.trials.FixedTrials``) what to run and whether to stop.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
from typing import Any

import ray
import torch
from ray import tune
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from fpa_core import storage
from fpa_core.config import to_dict
from fpa_core.train_config import TrainConfig, build_config
from fpa_core.trainer import prepare_real_features as _prepare_features
from sweeps.sweep import SweepSettings
from sweeps.trainable import run_trial, trial_resources
from sweeps.trials import TrialBook

log = logging.getLogger(__name__)

_USER_MAX_PENDING = os.environ.get("TUNE_MAX_PENDING_TRIALS_PG")  # a user's own setting wins


_LIVE_BRIDGES: dict[str | None, TrialBook] = {}  # the bridge of each sweep this process drives, by the sweep's name


def bind_on_restore(name: str, bridge: TrialBook) -> None:
    """Make ``bridge`` the one that sweep ``name``'s searcher and scheduler take up when Ray unpickles them
    from its saved experiment (``Tuner.restore``)."""
    _LIVE_BRIDGES[name] = bridge


class _Bound:
    """A Ray Tune plug-in that talks to a bridge. Ray pickles the plug-in into the run's ``tuner.pkl``; the
    bridge (a database connection, maybe with credentials) stays out of it, and the plug-in, unpickled by a
    resumed sweep's driver, takes up that driver's bridge for the same sweep (``bind_on_restore``)."""

    bridge: TrialBook | None
    sweep: str | None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "bridge": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.bridge = _LIVE_BRIDGES.get(self.sweep)


class BridgeSearcher(_Bound, Searcher):
    """Ray Tune's view of a trial book (OptunaBridge or FixedTrials): suggest() asks it for the next trial,
    on_trial_complete() tells it how the trial ended."""

    def __init__(self, bridge: TrialBook):
        super().__init__(metric=bridge.metric, mode="min")
        self.bridge, self.sweep = bridge, bridge.sweep

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        config = self.bridge.new_trial(trial_id)
        return Searcher.FINISHED if config is None else config

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.bridge.complete(trial_id, result, error)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "w") as f:
            json.dump(self.bridge.get_state(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path) as f:
            self.bridge.set_state(json.load(f))


class BridgeScheduler(_Bound, FIFOScheduler):
    """FIFO scheduling; after each reported evaluation, the bridge (Optuna's pruner) decides whether the trial goes on."""

    def __init__(self, bridge: TrialBook):
        super().__init__()
        self.bridge, self.sweep = bridge, bridge.sweep

    def on_trial_add(self, tune_controller, trial) -> None:
        super().on_trial_add(tune_controller, trial)
        self.bridge.attach(trial.trial_id, trial.config.get("trial_id"))

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        return TrialScheduler.STOP if self.bridge.report(trial.trial_id, result) else TrialScheduler.CONTINUE


def connect(settings: SweepSettings) -> dict[str, float]:
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
    log.info("Ray cluster: %s; each trial takes %s", describe_resources(ray.cluster_resources()), resources)
    return resources


def run_trials(settings: SweepSettings, bridge: TrialBook, resources: dict[str, float], resume: bool = False) -> None:
    """Run the sweep's trials to their end, each with ``resources``: a new Tuner, or (``resume``) the one Ray
    saved in the sweep's storage, bound to ``bridge``. Returns when Ray does, also on Ctrl-C (Ray saves the
    state and stops the trials, which then never end: ``bridge.interrupted()``)."""
    _keep_slots_busy(settings, resources)
    trainable = tune.with_resources(run_trial, resources)
    tuner = _restored_tuner(settings, trainable, bridge) if resume else _new_tuner(settings, trainable, bridge)
    with _sigterm_as_ctrl_c():
        tuner.fit()


@contextlib.contextmanager
def _sigterm_as_ctrl_c():
    """SIGTERM (a scheduler, docker stop, Kubernetes) stops the sweep as Ctrl-C does: Ray Tune's SIGINT handler
    saves the experiment and returns, and the trials stay resumable."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        log.warning("SIGTERM: stopping the sweep as on Ctrl-C (its state is saved for --resume)")
        os.kill(os.getpid(), signal.SIGINT)

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _new_tuner(settings: SweepSettings, trainable, bridge: TrialBook) -> tune.Tuner:
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=BridgeSearcher(bridge), scheduler=BridgeScheduler(bridge),
                                    num_samples=settings.num_trials, max_concurrent_trials=settings.max_concurrent,
                                    trial_name_creator=_trial_name, trial_dirname_creator=_trial_name,
                                    reuse_actors=True),
        run_config=tune.RunConfig(name=settings.name, **_ray_storage(settings.storage),
                                  failure_config=tune.FailureConfig(max_failures=settings.max_failures),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=2), verbose=1))


def prepare_real_features(config: TrainConfig, settings: SweepSettings, resources: dict[str, float]) -> None:
    """The real set's Inception features, once, before any trial, with the CPUs of all the sweep's slots, which
    no trial uses yet. Without it the first trials would compute the same features at once, each on its own
    share of the machine. On a one-node cluster that is this machine, trials without GPUs, the driver computes
    them itself (no process to start); elsewhere a Ray task with one trial's GPUs does, on one node: at most the
    CPUs of the largest node that can hold a trial."""
    per_trial = resources.get("cpu", 1)
    log.info("the real images' features (%s, %dx%d, %d-d), once for every trial", config.data.dataset,
             config.data.resolution, config.data.resolution, config.fid.dims)
    nodes = [n for n in ray.nodes() if n["Alive"]]
    if not resources.get("gpu") and len(nodes) == 1 and nodes[0]["NodeID"] == ray.get_runtime_context().get_node_id():
        threads = max(1, int(min(nodes[0]["Resources"].get("CPU", 1), _slots(settings, resources) * per_trial)))
        _prepare_task(to_dict(config), settings.folder, threads, device="cpu")
        return
    fit = [n["Resources"] for n in nodes if n["Resources"].get("GPU", 0) >= resources.get("gpu", 0)]
    largest = max((node.get("CPU", 0) for node in fit), default=per_trial)
    cpus = max(per_trial, min(largest, _slots(settings, resources) * per_trial))
    task = ray.remote(_prepare_task).options(num_cpus=cpus, num_gpus=resources.get("gpu", 0))
    ray.get(task.remote(to_dict(config), settings.folder, max(1, int(cpus))))


def _prepare_task(config: dict[str, Any], out: str, threads: int, device: str = "auto") -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _prepare_features(build_config(config), out, device=device)
    finally:
        torch.set_num_threads(before)


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


def _restored_tuner(settings: SweepSettings, trainable, bridge: TrialBook) -> tune.Tuner:
    ray_storage = _ray_storage(settings.storage)
    path = storage.join(ray_storage["storage_path"], settings.name)
    if not tune.Tuner.can_restore(path, storage_filesystem=ray_storage.get("storage_filesystem")):
        raise ValueError(f"sweep {settings.name} has no Ray experiment state in {settings.storage} (its driver "
                         "died before Ray saved any); start it again under a new --name")
    if (settings.address or "").startswith("ray://"):  # the Tuner would run on the head, away from this bridge
        raise ValueError("--resume needs a driver attached with --address auto or on the head, not a ray:// client")
    bind_on_restore(settings.name, bridge)  # the searcher and scheduler Ray unpickles take this run's bridge
    return tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=False, restart_errored=False,
                              storage_filesystem=ray_storage.get("storage_filesystem"))


def _trial_name(trial) -> str:
    return trial.config["trial_id"]  # trial_<Optuna number>, from the searcher


def _ray_storage(location: str) -> dict[str, Any]:
    if not storage.is_s3(location):
        return {"storage_path": location}
    import pyarrow.fs

    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    filesystem = pyarrow.fs.S3FileSystem(endpoint_override=endpoint, scheme=endpoint.split("://")[0]) \
        if endpoint else pyarrow.fs.S3FileSystem()
    return {"storage_path": location[len("s3://"):], "storage_filesystem": filesystem}


def describe_resources(resources: dict[str, float]) -> str:
    return ", ".join(f"{resources.get(k, 0):g} {k}" for k in ("CPU", "GPU")) + f", {len(ray.nodes())} node(s)"
