"""Improved precision and recall (Kynkäänniemi et al., 2019) of generated against real features.

Each set's manifold is the union of balls around its points, each as wide as the distance to the point's
k-th nearest neighbour in its own set (k = 3):

    precision = share of generated points inside the real manifold    (are the samples realistic?)
    recall    = share of real points inside the generated manifold    (do the samples cover the data?)

A generator that paints one blob has precision near 1 or 0 and recall near 0, whatever its FID.
Distances are Euclidean, computed in blocks as ||a||^2 + ||b||^2 - 2 a . b in float32.
"""

from __future__ import annotations

import numpy as np

NEIGHBOURS = 3
_BLOCK = 4096  # rows of a distance block: 4096 x N float32


def precision_recall(generated: np.ndarray, real: np.ndarray, k: int = NEIGHBOURS) -> tuple[float, float]:
    """(precision, recall) of generated (N, D) against real (M, D) features."""
    fake, real = np.asarray(generated, np.float32), np.asarray(real, np.float32)
    if fake.ndim != 2 or real.ndim != 2 or fake.shape[1] != real.shape[1]:
        raise ValueError(f"expected features (N, D) and (M, D), got {fake.shape} and {real.shape}")
    if min(len(fake), len(real)) <= k:
        raise ValueError(f"precision and recall with k = {k} need more than {k} images on each side, "
                         f"got {len(fake)} and {len(real)}")
    real_radii, fake_radii = _kth_neighbour_distances(real, k), _kth_neighbour_distances(fake, k)
    precision = _inside(fake, real, real_radii).mean()
    recall = _inside(real, fake, fake_radii).mean()
    return float(precision), float(recall)


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) squared distances, clipped at 0 against rounding."""
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * (a @ b.T)
    return np.maximum(d, 0)


def _kth_neighbour_distances(points: np.ndarray, k: int) -> np.ndarray:
    """(N,) the distance from each point to its k-th nearest other point (its own distance, 0, is the 0th)."""
    out = np.empty(len(points), np.float32)
    for start in range(0, len(points), _BLOCK):
        d = _squared_distances(points[start:start + _BLOCK], points)  # (b, N)
        out[start:start + _BLOCK] = np.sqrt(np.partition(d, k, axis=1)[:, k])
    return out


def _inside(queries: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """(Q,) whether each query lies within radii[j] of some centre j."""
    out = np.empty(len(queries), bool)
    squared = radii.astype(np.float32) ** 2
    for start in range(0, len(queries), _BLOCK):
        d = _squared_distances(queries[start:start + _BLOCK], centres)  # (b, C)
        out[start:start + _BLOCK] = (d <= squared[None, :]).any(axis=1)
    return out
