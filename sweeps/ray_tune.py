"""Ray Tune: connecting to Ray, the resources of a trial and how many run at once, and the Tuner that runs a
sweep's trials, new or resumed, with a searcher and a scheduler that ask the sweep's trial book
(``sweeps.study.OptunaBridge`` or ``sweeps.trials.FixedTrials``) what to run and whether to stop.
"""

from __future__ import annotations

import contextlib
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
from fpa_core.train.config import TrainConfig, build_config
from fpa_core.train.trainer import prepare_real_features as _prepare_features
from sweeps.simulated_trial import run_simulated_trial
from sweeps.sweep import SweepSettings
from sweeps.trainable import run_trial, trial_resources
from sweeps.trials import TrialBook

log = logging.getLogger(__name__)

_USER_MAX_PENDING = os.environ.get("TUNE_MAX_PENDING_TRIALS_PG")  # a user's own setting wins
# What Ray Tune would copy from the driver's environment into every trial's runtime environment, which Ray's
# runtime-env agent then writes in plain text to its log (ray/tune/execution/class_cache.py).
_CREDENTIALS = frozenset({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN"})


class _Bound:
    """A Ray Tune plug-in that talks to a bridge. Ray pickles the plug-ins into the run's ``tuner.pkl``; the
    bridge (a database connection, maybe with credentials) stays out of it. Nothing here is ever unpickled
    again: a resumed sweep starts a new Tuner from its study (``run_trials``), so the storage's pickles are
    never trusted."""

    bridge: TrialBook | None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "bridge": None}


class BridgeSearcher(_Bound, Searcher):
    """Ray Tune's view of a trial book (OptunaBridge or FixedTrials): suggest() asks it for the next trial,
    on_trial_complete() tells it how the trial ended."""

    def __init__(self, bridge: TrialBook):
        super().__init__(metric=bridge.metric, mode="min")
        self.bridge = bridge

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        task = self.bridge.new_trial(trial_id)
        return Searcher.FINISHED if task is None else task.to_ray()

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.bridge.complete(trial_id, result, error)

    def save_to_dir(self, checkpoint_dir: str, session_str: str = "default") -> None:
        pass  # the sweep's state is its study's, written as it changes; Ray keeps no copy of it

    def restore_from_dir(self, checkpoint_dir: str) -> None:
        raise RuntimeError("a sweep resumes from its study, never from Ray's saved searcher state")


class BridgeScheduler(_Bound, FIFOScheduler):
    """FIFO scheduling; after each reported evaluation, the bridge (Optuna's pruner) decides whether the trial goes on."""

    def __init__(self, bridge: TrialBook):
        super().__init__()
        self.bridge = bridge

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
    _keep_credentials_out_of_runtime_envs()
    if not ray.is_initialized():
        # Without --address: the cluster a Ray Job runs on (RAY_ADDRESS), else a new local Ray; never a
        # cluster that some `ray start` on this machine left behind.
        address = settings.address or os.environ.get("RAY_ADDRESS") or "local"
        with _ray_processes_in_a_group_of_their_own():
            ray.init(address=address, include_dashboard=False, configure_logging=False)
    gpus = settings.gpus_per_trial
    if gpus is None:
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    resources = trial_resources(settings.cpus_per_trial, gpus)
    log.info("Ray cluster: %s; each trial takes %s", describe_resources(ray.cluster_resources()), resources)
    return resources


@contextlib.contextmanager
def _ray_processes_in_a_group_of_their_own():
    """A local Ray's GCS, raylet and agents start in a process group of their own, not in the driver's.

    Slurm's scancel, systemd's stop and `timeout` send SIGTERM to every process of the job's group. Had the GCS
    been in it, it would die first, and the driver would hang a minute waiting for it, then abort without its
    --resume hint, leaving its trials RUNNING. Out of the group, only the driver gets the signal; it stops the
    trials as on Ctrl-C (``_sigterm_as_ctrl_c``) and shuts the processes down itself. They still die with the
    driver if it is killed: Ray starts them with the kernel's parent-death signal. (Ray has no setting for it:
    its processes are started by ``ray._private.services.start_ray_process`` through ``ConsolePopen``.)"""
    from ray._private import services

    plain = services.ConsolePopen

    class OwnGroup(plain):
        def __init__(self, *args, **kwargs):
            kwargs.setdefault("process_group", 0)
            super().__init__(*args, **kwargs)

    services.ConsolePopen = OwnGroup
    try:
        yield
    finally:
        services.ConsolePopen = plain


class _NoTunerRestoreHint(logging.Filter):
    """Ray Tune's "Resume experiment with: Tuner.restore(...)" on an interrupt points at the wrong command: a
    sweep resumes with ``python sweeps/launch.py --resume NAME``, which the driver prints."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Resume experiment with" not in record.getMessage()


logging.getLogger("ray.tune.tune").addFilter(_NoTunerRestoreHint())


def _keep_credentials_out_of_runtime_envs() -> None:
    """Trials take their S3 credentials from their own worker's environment, never from a copy that Ray Tune
    puts in their runtime environment (and so in /tmp/ray's logs). On a local Ray the workers inherit the
    driver's environment through the raylet; a cluster's nodes carry their own (deploy/: variables from
    secrets, an instance role or a credentials file)."""
    from ray.tune.execution import class_cache

    class_cache.ENV_VARS_TO_PROPAGATE = frozenset(class_cache.ENV_VARS_TO_PROPAGATE) - _CREDENTIALS


def run_trials(settings: SweepSettings, bridge: TrialBook, resources: dict[str, float], num_trials: int) -> None:
    """Run ``num_trials`` Ray trials to their end, each with ``resources``, as ``bridge`` hands them out. A
    resumed sweep runs a new Tuner too: its bridge, rebuilt from the study, hands its unfinished trials out
    first, and each continues from the newest checkpoint in its folder. Ray's own saved experiment
    (``tuner.pkl`` and the rest, pickles that anyone who can write the storage could change) is never read.
    Returns when Ray does, also on Ctrl-C and SIGTERM (Ray stops the trials, which then never end:
    ``bridge.interrupted()``)."""
    if num_trials <= 0:
        return
    _keep_slots_busy(settings, resources)
    trainable = tune.with_resources(run_simulated_trial if settings.simulate else run_trial, resources)
    tuner = _tuner(settings, trainable, bridge, num_trials)
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


def _tuner(settings: SweepSettings, trainable, bridge: TrialBook, num_trials: int) -> tune.Tuner:
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=BridgeSearcher(bridge), scheduler=BridgeScheduler(bridge),
                                    num_samples=num_trials, max_concurrent_trials=settings.max_concurrent,
                                    trial_name_creator=_trial_name, trial_dirname_creator=_trial_name,
                                    reuse_actors=True),
        run_config=tune.RunConfig(name=settings.name, **_ray_storage(settings.storage),
                                  failure_config=tune.FailureConfig(max_failures=settings.max_failures),
                                  checkpoint_config=_POINTERS_KEPT, verbose=1))


# Every Tune checkpoint a trial reports is kept. Each is a pointer of a few hundred bytes (the trainer's own
# checkpoints live in its run folder, and retention trims those), and Tune's num_to_keep would cost O(trials)
# per report: with it, a trial that checkpointed num_to_keep times forces a snapshot of the whole experiment's
# state (52 MB at 1,000 trials), so the snapshots came every few reports (BENCHMARKS.md, "The control plane at
# 100 and 1,000 trials").
_POINTERS_KEPT = tune.CheckpointConfig(num_to_keep=None)


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
