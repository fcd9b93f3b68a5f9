"""What a sweep is checked for before anything starts: no Ray, no MLflow run, no Optuna study, no folder.

``problems(spec, settings)`` returns every problem of a new sweep, each naming what is wrong and the fix:

    the name      the storage does not hold a sweep of that name already
    the dataset   it is where its name or path says, and holds images (none is decoded); a simulated sweep's
                  curves instead (``--simulate model`` or a finished sweep)
    the stores    the storage, MLflow's tracking URI and Optuna's database answer, or their folders are writable
    the flags     a U-Net stage's --base checkpoint exists; a GPU budget goes with trials that take GPUs

``store_problems(settings)`` checks the stores alone, for a resumed sweep. Nothing here imports torch, Ray or
MLflow, so that a launch that cannot run says so in a second. The FID Inception's weights are checked next,
by the driver, before it starts Ray (reading them needs torch).
"""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

from fpa_core import storage
from fpa_core.data import DatasetNotFoundError, check_dataset
from sweeps.pruning import NEEDS_KID
from sweeps.simulation import source_problem
from sweeps.space import SweepSpec
from sweeps.sweep import SweepSettings, redact, sweep_exists

TIMEOUT_S = 10.0  # what each store gets to answer


def problems(spec: SweepSpec, settings: SweepSettings) -> list[str]:
    found = []
    if sweep_exists(settings.storage, settings.name):
        found.append(f"{settings.folder} already holds a sweep named {settings.name}: continue it with --resume "
                     f"{settings.name}, or choose another --name")
    if settings.simulate:  # a simulated sweep reads no image: the curves are its data
        problem = source_problem(settings.simulate, settings.storage)
        found += [problem] if problem else []
        if settings.stage == "unet":
            found.append("--simulate with --stage unet: a simulated sweep trains no generator for a U-Net to refine")
    else:
        try:
            check_dataset(spec.dataset)
        except (DatasetNotFoundError, ValueError, ImportError) as e:
            found.append(str(e))
    found += store_problems(settings)
    base = settings.base
    if settings.stage == "unet" and base and base != "champion" and not base.startswith("models:/") \
            and not storage.is_s3(base) and not Path(base).is_file():
        found.append(f"--base {base}: no such checkpoint; give an FPA checkpoint, models:/NAME@ALIAS or champion")
    if settings.budget_gpu_hours is not None and settings.gpus_per_trial == 0:
        found.append("--budget-gpu-hours with --gpus-per-trial 0: the trials use no GPU-hours, so the budget would "
                     "never stop the sweep; use --budget-cpu-hours")
    if settings.pruner in NEEDS_KID and settings.metric != "kid":
        found.append(f"--pruner {settings.pruner} with --metric {settings.metric}: it compares beyond each "
                     "evaluation's own std, which KID has and FID has not; add --metric kid, or use --pruner "
                     "successive-halving")
    return found


def store_problems(settings: SweepSettings) -> list[str]:
    """The sweep's three stores: its storage (folder or bucket), MLflow and Optuna."""
    found = []
    problem = storage.unreachable(settings.storage, TIMEOUT_S)
    if problem:
        found.append(f"--storage {settings.storage}: {problem}")
    problem = _database_problem(settings.tracking_uri) if "://" in settings.tracking_uri else None
    if settings.tracking_uri.startswith(("http://", "https://")):
        problem = _http_problem(settings.tracking_uri)
    if problem:
        found.append(f"the MLflow tracking URI {redact(settings.tracking_uri)}: {problem}")
    problem = _database_problem(settings.optuna_storage)
    if problem:
        found.append(f"the Optuna storage {redact(settings.optuna_storage)}: {problem}")
    return found


def _http_problem(url: str) -> str | None:
    """An MLflow server answers its /health (with any status: a server with auth may refuse it)."""
    try:
        urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=TIMEOUT_S)
    except urllib.error.HTTPError:
        return None
    except (OSError, ValueError) as e:
        return f"no answer ({getattr(e, 'reason', e)}); start the server, or pass the --tracking-uri it listens on"
    return None


def _database_problem(url: str) -> str | None:
    """A SQLite file's folder is writable; another database accepts a connection (with its driver's
    credentials from the environment, e.g. PGPASSWORD)."""
    if url.startswith("sqlite:///"):
        return storage.unreachable(Path(url[len("sqlite:///"):]).parent)
    if url.startswith(("file:", "databricks")) or "://" not in url:
        return None
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(url, connect_args=_timeout_args(url), poolclass=sqlalchemy.pool.NullPool)
        with engine.connect():
            pass
    except Exception as e:  # noqa: BLE001 - every driver has its own errors; the message says what they said
        reason = str(getattr(e, "orig", e)).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return f"cannot connect ({reason}); start the database, or pass the URL it listens on"
    return None


def _timeout_args(url: str) -> dict[str, int]:
    if url.startswith("postgresql"):
        return {"connect_timeout": int(TIMEOUT_S)}
    if url.startswith("mysql"):
        return {"connect_timeout": int(TIMEOUT_S)}
    return {}
