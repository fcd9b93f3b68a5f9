"""The one cache folder of fpa_core: $FPA_CACHE_DIR, else ~/.cache/fpa, with a subfolder per kind.

    datasets/   preprocessed image arrays (fpa_core.data.catalog)
    fid/        statistics and features of real image sets (fpa_core.metrics.evaluator)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # not on Windows: there each process computes for itself
    fcntl = None

ENV = "FPA_CACHE_DIR"


def cache_dir(kind: str) -> Path:
    """<$FPA_CACHE_DIR or ~/.cache/fpa>/<kind>, read when called (so that a changed environment counts)."""
    base = os.environ.get(ENV)
    return Path(base, kind) if base else Path.home() / ".cache" / "fpa" / kind


@contextlib.contextmanager
def locked(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on ``<path>.lock`` (a local file) for the duration, so that processes that would
    compute the same cache entry at once (runs or trials starting together on one machine) take turns:
    the first computes and writes it, the others wait, then find it."""
    lock = Path(f"{os.fspath(path)}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
        yield
