"""The one cache folder of fpa_core: $FPA_CACHE_DIR, else ~/.cache/fpa, with a subfolder per kind.

    datasets/   preprocessed image arrays (fpa_core.datasets)
    fid/        statistics and features of real image sets (fpa_core.metrics)
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "FPA_CACHE_DIR"


def cache_dir(kind: str) -> Path:
    """<$FPA_CACHE_DIR or ~/.cache/fpa>/<kind>, read when called (so that a changed environment counts)."""
    base = os.environ.get(ENV)
    return Path(base, kind) if base else Path.home() / ".cache" / "fpa" / kind
