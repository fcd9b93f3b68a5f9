"""A sweep as it lives in its storage: its settings, its folder's layout and its three stores, resolved once.

    <storage>/<name>/sweep.json                  what --resume needs: the spec, the settings, the U-Net's base
    <storage>/<name>/summary.json                written when the sweep ends
    <storage>/<name>/trials/<trial_id>/          each trial's metrics.jsonl, pictures and checkpoints/

The stores, for a new sweep (``new_settings``): the storage is --storage, else FPA_STORAGE, else ./sweeps_out;
MLflow's tracking URI --tracking-uri, else MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db; Optuna's
database --optuna-storage, else FPA_OPTUNA_STORAGE, else SQLite in the sweep's folder. A resumed sweep and a
continuation use the stores its sweep.json recorded (``recorded_settings``), unless a flag names another.
Every URL is recorded and shown without its credentials; a tracking URI that carries any is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from fpa_core import storage

SWEEP_FILE = "sweep.json"
SUMMARY_FILE = "summary.json"


@dataclass
class SweepSettings:
    name: str
    storage: str  # an absolute folder or s3://bucket/prefix: where the sweep's folder is
    tracking_uri: str  # MLflow
    optuna_storage: str  # Optuna's database URL
    num_trials: int = 20
    max_concurrent: int | None = None
    max_failures: int = 2
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None  # None: 1 when the cluster has GPUs when the sweep starts, else 0
    pruner: str = "median"
    warmup: int = 1
    patience: int | None = None  # prune only after this many evaluations without a new best
    budget_gpu_hours: float | None = None  # no new trial once the trials used this many GPU-hours
    budget_cpu_hours: float | None = None  # ... or this many CPU-hours
    seed: int = 0
    address: str | None = None
    profile: str | None = None
    stage: str = "fpa"  # fpa, or unet: a U-Net on the frozen FPA of ``base``
    metric: str = "fid"  # what the study minimises and prunes on (fid.metric of every trial)
    base: str | None = None  # stage unet: champion, models:/NAME@ALIAS or /NAME/VERSION, or a checkpoint
    simulate: str | None = None  # a simulated sweep's curves: model, or a finished sweep (sweeps.simulation)
    step_seconds: float = 0.001  # a simulated trial's seconds a training step
    keep_full: int = 3  # the best trials that keep every checkpoint; the rest keep their generator (retention)

    @property
    def folder(self) -> str:
        return sweep_folder(self.storage, self.name)

    def public(self) -> dict[str, Any]:
        """The settings as recorded in sweep.json, MLflow and summary.json: no credential in any URL."""
        return {**asdict(self), "optuna_storage": redact(self.optuna_storage), "tracking_uri": redact(self.tracking_uri)}


class SweepError(ValueError):
    """A sweep that cannot run as asked: ``problems`` names each problem and its fix. Nothing was started."""

    def __init__(self, problems: str | list[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class SweepNotFound(SweepError):
    """A command named a sweep that the storage does not hold."""


class SweepInterrupted(RuntimeError):
    """Ctrl-C (or SIGTERM to the driver): the trials stopped, their study and checkpoints kept; ``--resume``
    continues them."""

    def __init__(self, name: str, resumable: bool = True):
        hint = (f"continue it with: python sweeps/launch.py --resume {name} (and the same --storage)" if resumable
                else "its trials' checkpoints are kept; run fpa-continue again under a new --name")
        super().__init__(f"{name} was interrupted; its study and its trials' checkpoints are kept; {hint}")
        self.name = name


# -- the stores -------------------------------------------------------------------------------------------

def resolve_storage(flag: str | None = None) -> str:
    """--storage, else FPA_STORAGE (a cluster's head sets it), else ./sweeps_out; absolute."""
    location = flag or os.environ.get("FPA_STORAGE") or "./sweeps_out"
    return location if storage.is_s3(location) else str(Path(location).resolve())


def resolve_tracking_uri(flag: str | None = None) -> str:
    """--tracking-uri, else MLflow's own MLFLOW_TRACKING_URI, else ./mlflow.db."""
    return flag or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('mlflow.db').resolve()}"


def resolve_optuna_storage(flag: str | None, root: str, name: str) -> str:
    """--optuna-storage, else FPA_OPTUNA_STORAGE, else SQLite in the sweep's folder (under ./sweeps_out for a
    sweep on S3: SQLite needs a local file)."""
    if flag or os.environ.get("FPA_OPTUNA_STORAGE"):
        return flag or os.environ["FPA_OPTUNA_STORAGE"]
    folder = Path(root, name) if not storage.is_s3(root) else Path("sweeps_out", name).resolve()
    return f"sqlite:///{folder / 'optuna.db'}"  # its folder is made when the study is opened


def redact(uri: str | None) -> str | None:
    """A URI without its user-info (user:password@), safe to log or record."""
    if not uri or "://" not in uri:
        return uri
    try:
        parts = urlsplit(uri)
        if parts.username is None and parts.password is None:
            return uri
        port = parts.port
    except ValueError:  # not a URI that can be taken apart: keep only its scheme
        return uri.split("://", 1)[0] + "://<unparsable>"
    host = parts.hostname or ""
    netloc = f"{host}:{port}" if port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def credentials_in(uri: str | None) -> bool:
    """Whether a URL carries user-info (user:password@host)."""
    return bool(uri) and "@" in uri.split("://", 1)[-1].split("/", 1)[0]


def tracking_uri_problems(flag: str | None) -> list[str]:
    """A tracking URI (the flag's, else MLFLOW_TRACKING_URI) with a password in it is refused: trials carry
    it in their configs, which Ray writes to storage."""
    for name, uri in (("--tracking-uri", flag), ("MLFLOW_TRACKING_URI", None if flag else
                                                 os.environ.get("MLFLOW_TRACKING_URI"))):
        if credentials_in(uri):
            return [f"{name} must not carry credentials: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD "
                    "(or PGPASSWORD for a PostgreSQL store) in the environment"]
        try:
            if uri:
                urlsplit(uri).port  # a bad host or port raises here, not in MLflow later
        except ValueError as e:  # (no credentials in it: checked above)
            return [f"{name} {uri!r} is not a valid URI ({e}); e.g. http://mlflow:5000 or sqlite:///mlflow.db"]
    return []


def new_settings(name: str, *, storage: str | None = None, tracking_uri: str | None = None,
                 optuna_storage: str | None = None, **rest: Any) -> SweepSettings:
    """A new sweep's settings, its stores resolved from the flags given (None: not given)."""
    root = resolve_storage(storage)
    return SweepSettings(name=name, storage=root, tracking_uri=resolve_tracking_uri(tracking_uri),
                         optuna_storage=resolve_optuna_storage(optuna_storage, root, name), **rest)


def recorded_settings(saved: dict[str, Any], root: str, *, tracking_uri: str | None = None,
                      optuna_storage: str | None = None, **changes: Any) -> SweepSettings:
    """A recorded sweep's settings (from its sweep.json in ``root``) with the stores it recorded, except where a
    flag names another (a URL recorded with credentials was recorded without them: pass it again)."""
    known = {f.name for f in fields(SweepSettings)}
    recorded = {k: v for k, v in saved["settings"].items() if k in known}
    return SweepSettings(**{**recorded, "storage": root, "tracking_uri": tracking_uri or recorded["tracking_uri"],
                            "optuna_storage": optuna_storage or recorded["optuna_storage"], **changes})


# -- the sweep's folder -----------------------------------------------------------------------------------

def sweep_folder(root: str, name: str) -> str:
    return storage.join(root, name)


def trial_folder(folder: str, trial_id: str) -> str:
    """A trial's folder in a sweep's ``folder``."""
    return storage.join(folder, "trials", trial_id)


def list_sweeps(root: str) -> list[str]:
    """The sweeps a storage location holds, by name."""
    return [name for name in storage.list_names(root) if storage.exists(storage.join(root, name, SWEEP_FILE))]


def sweep_exists(root: str, name: str) -> bool:
    return storage.exists(storage.join(root, name, SWEEP_FILE))


def write_record(settings: SweepSettings, spec: dict[str, Any], base: dict[str, Any] | None) -> str:
    """Write the sweep's sweep.json; returns its digest (``record_digest``)."""
    record = {"spec": spec, "settings": settings.public(), "base": base}
    storage.write_bytes(storage.join(settings.folder, SWEEP_FILE), json.dumps(record, indent=2).encode())
    return record_digest(record)


def record_digest(record: dict[str, Any]) -> str:
    """The SHA-256 of a sweep record's content (its keys sorted): the sweep's study keeps it, so that a resumed
    sweep can tell that its sweep.json is the one it was started with."""
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def read_record(root: str, name: str) -> dict[str, Any]:
    """A sweep's sweep.json, or SweepNotFound naming the sweeps the storage holds."""
    try:
        return json.loads(storage.read_bytes(storage.join(root, name, SWEEP_FILE)))
    except FileNotFoundError:
        raise SweepNotFound(f"no sweep named {name!r} in {root}; it holds {_held(root)} (pass --storage where the "
                            "sweep ran)") from None


def write_summary(settings: SweepSettings, summary: dict[str, Any]) -> str:
    uri = storage.join(settings.folder, SUMMARY_FILE)
    storage.write_bytes(uri, json.dumps(summary, indent=2).encode())
    return uri


def read_summary(root: str, name: str) -> dict[str, Any]:
    """A finished sweep's summary.json, or SweepNotFound naming the sweeps the storage holds."""
    try:
        return json.loads(storage.read_bytes(storage.join(root, name, SUMMARY_FILE)))
    except FileNotFoundError:
        raise SweepNotFound(f"no finished sweep named {name!r} in {root} (no {SUMMARY_FILE}); it holds "
                            f"{_held(root)}") from None


def _held(root: str) -> str:
    known = list_sweeps(root)
    return ", ".join(known) if known else "no sweeps"
