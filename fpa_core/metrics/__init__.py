"""Scoring generators: FID, KID and precision/recall from one set of Inception features.

    evaluator.py         Evaluator: a generator's scores at an evaluation, the real side cached (torch)
    fid.py, kid.py       the Fréchet distance; the unbiased polynomial-kernel MMD (mean and std over subsets)
    precision_recall.py  k-NN manifolds of the two feature sets (Kynkäänniemi et al. 2019)
    inception.py         pytorch-fid's Inception, at any of its feature sizes
    weights.py           where the calibrated FID Inception's weights come from, and their checks
    protocol.py          the paper's protocol for a checkpoint (50 K images, float32): what fpa_core.evaluate runs

This module itself needs no torch: the names of the backbones, metrics and scores, one line for people, and the
best of a run's evaluations, for code that only reads records (``fpa-status``, a sweep file's checks). An
evaluation is a dict: ``{"step": 3000, "fid": 31.2, "kid": 0.0046, "kid_std": 0.0003, ...}``.
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
