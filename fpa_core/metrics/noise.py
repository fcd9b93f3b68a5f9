"""When one score beats another by more than their noise: the rule that promotion and a sweep's "best" share.

Two scores a and b (lower is better), each one evaluation with standard deviation s_a and s_b under the same
protocol (the spread of that evaluation over what it samples: latent seeds, or KID's subsets), differ by

    d = b - a,    std(d) = sqrt(s_a^2 + s_b^2)

and a is **better** than b when d > z * std(d), z = Z = 2 (a one-sided test at about 2.3% of being fooled
by noise when the two are equal). Otherwise they are **tied**. Torch-free: ``fpa-status`` and the sweep's
summary use it as well as ``fpa-promote``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

Z = 2.0
NOISE_SEEDS = 3  # fresh evaluations that measure a candidate's noise when it is promoted
# One periodic evaluation's std over 5 latent seeds, measured on the digits demo's champion at its evaluation
# settings (BENCHMARKS.md, "Metric noise"): the unit in which the pruner benchmarks state regret.
DEMO_NOISE_STD = {"fid": 0.63, "kid": 0.00050}


@dataclass(frozen=True)
class Noisy:
    """A score and the standard deviation of one evaluation of it; ``source`` says how that was measured."""

    value: float
    std: float
    source: str  # e.g. "std over 4 latent seeds", "KID std over 100 subsets"

    def __post_init__(self):
        if not (math.isfinite(self.value) and math.isfinite(self.std) and self.std >= 0):
            raise ValueError(f"a noisy score needs a finite value and std >= 0, got {self.value} ± {self.std}")


@dataclass(frozen=True)
class Comparison:
    """``candidate`` against ``incumbent``: their difference (positive: the candidate is lower), the margin
    it must exceed, and whether it does."""

    difference: float
    std: float
    margin: float
    z: float

    @property
    def better(self) -> bool:
        return self.difference > self.margin

    def describe(self, label: str) -> str:
        """'KID 0.0049 lower by 0.0003, within the noise margin 0.0014 (2 std of the difference)'."""
        verdict = "beyond" if self.better else "within"
        direction = "lower" if self.difference >= 0 else "higher"
        return (f"{label} {direction} by {abs(self.difference):.3g}, {verdict} the noise margin {self.margin:.3g} "
                f"({self.z:g} std of the difference)")


def compare(candidate: Noisy, incumbent: Noisy, z: float = Z) -> Comparison:
    """Is ``candidate`` better (lower) than ``incumbent`` by more than z standard deviations of the difference?"""
    std = math.hypot(candidate.std, incumbent.std)
    return Comparison(incumbent.value - candidate.value, std, z * std, z)


def tied_with_best(scores: Sequence[Noisy], z: float = Z) -> list[int]:
    """The indices of ``scores`` that the best (lowest) does not beat beyond noise, best first and then by
    value: the trials that are the best as far as the evaluations can tell."""
    if not scores:
        return []
    order = sorted(range(len(scores)), key=lambda i: scores[i].value)
    best = scores[order[0]]
    return [i for i in order if i == order[0] or not compare(best, scores[i], z).better]


def spread(value: float, repeats: Sequence[float], source: str) -> Noisy:
    """A recorded ``value`` with the sample standard deviation of ``repeats``: fresh evaluations of the same
    generator under the same protocol (at least 2)."""
    if len(repeats) < 2:
        raise ValueError(f"a spread needs at least 2 repeated evaluations, got {len(repeats)}")
    return Noisy(float(value), statistics.stdev(repeats), source)
