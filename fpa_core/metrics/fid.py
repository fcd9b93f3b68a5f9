"""The Fréchet distance between two Gaussians fitted to Inception features (Heusel et al., 2017):

    FID = ||mu_g - mu_r||^2 + Tr(S_g + S_r - 2 (S_g S_r)^{1/2})

mu and S are the mean and covariance of the features of N generated images (g) and of the real ones
(r). The features, the image pipeline before them and the cache of real statistics are in
fpa_core.metrics.evaluator; the network in fpa_core.metrics.inception.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch

from fpa_core.threads import one_cpu_thread


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """d^2 = ||mu1 - mu2||^2 + Tr S1 + Tr S2 - 2 Tr (S1 S2)^{1/2}, in float64.

    For any A with S1 = A A^T, the product S1 S2 = A (A^T S2) has the eigenvalues of A^T S2 A (XY and YX
    share their eigenvalues), a symmetric positive semi-definite matrix. So its eigenvalues lambda_i are
    real and >= 0, and

        Tr (S1 S2)^{1/2} = sum_i sqrt(lambda_i(A^T S2 A)),

    one symmetric eigenvalue problem where pytorch-fid takes scipy's sqrtm of the non-symmetric S1 S2 (a
    Schur decomposition, several times slower). A is the Cholesky factor of S1, or U diag(sqrt w) from
    S1 = U diag(w) U^T when S1 is singular. Eigenvalues below 0 from rounding count as 0. The linear
    algebra runs in torch on one CPU thread (see fpa_core.threads).
    """
    mu1, mu2 = (np.atleast_1d(np.asarray(m, dtype=np.float64)) for m in (mu1, mu2))
    sigma1, sigma2 = (np.atleast_2d(np.asarray(s, dtype=np.float64)) for s in (sigma1, sigma2))
    _check_gaussian(mu1, sigma1)
    _check_gaussian(mu2, sigma2)
    if mu1.shape != mu2.shape:
        raise ValueError(f"statistics of different dimensions: {mu1.shape[0]} and {mu2.shape[0]}")
    with one_cpu_thread():
        s2 = torch.tensor(sigma2, dtype=torch.float64)  # (D, D)
        a = _square_root_factor(torch.tensor(sigma1, dtype=torch.float64))  # (D, D), A A^T = S1
        lambdas = torch.linalg.eigvalsh(a.T @ s2 @ a)  # (D,)
        trace_sqrt = lambdas.clamp(min=0).sqrt().sum().item()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)


def _check_gaussian(mu: np.ndarray, sigma: np.ndarray) -> None:
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"expected a mean (D,) and a covariance (D, D), got {mu.shape} and {sigma.shape}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError("the statistics contain NaN or infinite values")


def _square_root_factor(sigma: torch.Tensor) -> torch.Tensor:
    """A (D, D) with A A^T = sigma: the Cholesky factor, or U diag(sqrt w) when sigma is singular."""
    factor, info = torch.linalg.cholesky_ex(sigma)
    if info.item() == 0:
        return factor
    w, u = torch.linalg.eigh(sigma)  # sigma = U diag(w) U^T
    return u * w.clamp(min=0).sqrt()


@dataclass
class FIDStats:
    """The mean and covariance of the features of n images."""

    mu: np.ndarray  # (D,) float64
    sigma: np.ndarray  # (D, D) float64
    n: int

    def __post_init__(self):
        self.mu = np.asarray(self.mu, dtype=np.float64)
        self.sigma = np.asarray(self.sigma, dtype=np.float64)
        self.n = int(self.n)

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, mu=self.mu, sigma=self.sigma, n=np.int64(self.n))
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> FIDStats:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            return cls(arrays["mu"], arrays["sigma"], int(arrays["n"]))


class Moments:
    """Running mean and covariance of feature rows in float64, taken about a fixed shift c (the first
    batch's mean) so that large means cost no precision:

        mu = c + d,   S = (sum_i (x_i - c)(x_i - c)^T - n d d^T) / (n - 1),   d = sum_i (x_i - c) / n
    """

    def __init__(self):
        self.n = 0
        self.shift = self.total = self.outer = None

    def add(self, features: np.ndarray) -> None:  # (B, D) float64
        if self.shift is None:
            self.shift = features.mean(axis=0)  # (D,)
            self.total = np.zeros_like(self.shift)  # (D,)
            self.outer = np.zeros((self.shift.shape[0],) * 2)  # (D, D)
        centred = features - self.shift  # (B, D)
        self.n += features.shape[0]
        self.total += centred.sum(axis=0)
        self.outer += centred.T @ centred

    def stats(self) -> FIDStats:
        if self.n < 2:
            raise ValueError(f"a covariance needs at least 2 images, got {self.n}")
        d = self.total / self.n  # (D,)
        return FIDStats(self.shift + d, (self.outer - self.n * np.outer(d, d)) / (self.n - 1), self.n)
