"""What an evaluation records, without torch: the names of the backbones, metrics and scores, one line for
people, and the best of a run's evaluations. Code that only reads records (the sweep's status command, the
sweep's search space) imports this, not ``fpa_core.metrics``, which loads torch and Inception.

An evaluation is a dict: ``{"step": 3000, "fid": 31.2, "kid": 0.0046, "kid_std": 0.0003, ...}``.
"""

from __future__ import annotations

import math
from typing import Any

BACKBONES = ("inception", "inception-random")
METRICS = ("fid", "kid")  # what can pick a run's best checkpoint, and what a sweep minimises
SCORES = ("fid", "kid", "kid_std", "precision", "recall")  # what every evaluation measures


def describe(scores: dict[str, Any], fid_label: str = "FID") -> str:
    """One line for people: 'FID 12.34, KID 0.0123 ± 0.0010, precision 0.712, recall 0.456' (- where missing)."""
    def value(key: str, spec: str) -> str:
        v = scores.get(key)
        return "-" if v is None else format(v, spec)

    return (f"{fid_label} {value('fid', '.2f')}, KID {value('kid', '.4f')} ± {value('kid_std', '.4f')}, "
            f"precision {value('precision', '.3f')}, recall {value('recall', '.3f')}")


def best_evaluation(evaluations: list[dict[str, Any]], metric: str) -> dict[str, Any] | None:
    """The evaluation with the lowest ``metric``; the earliest of ties."""
    scored = [e for e in evaluations if e.get(metric) is not None and math.isfinite(e[metric])]
    return min(scored, key=lambda e: (e[metric], e["step"])) if scored else None
