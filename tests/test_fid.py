"""The Fréchet distance against pytorch-fid's, and the statistics it is computed from. The network and its
weights are tested in test_inception.py, the evaluator and the other scores in test_metrics.py."""

import warnings

import numpy as np
import pytest
from pytorch_fid.fid_score import calculate_frechet_distance
from threadpoolctl import threadpool_limits

from fpa_core.metrics.fid import FIDStats, Moments, frechet_distance


def feature_stats(rng, n, d, shift=0.0, scale=1.0):
    """Mean and covariance of n ReLU'd, correlated d-dimensional features, like pooled activations."""
    mix = rng.standard_normal((d, d)) * scale / np.sqrt(d)
    x = np.maximum(rng.standard_normal((n, d)) @ mix + shift, 0)  # (n, d)
    return x.mean(axis=0), np.cov(x, rowvar=False)


def reference(mu1, sigma1, mu2, sigma2):
    with warnings.catch_warnings():  # scipy's sqrtm warns on the singular covariances of n < d
        warnings.simplefilter("ignore")
        return float(calculate_frechet_distance(mu1, sigma1, mu2, sigma2))


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    """numpy's and scipy's OpenBLAS on one thread: on a busy 2-core machine their spinning threads make
    pytorch-fid's sqrtm at 2048 dims several times slower (about 15 s instead of 50 s)."""
    with threadpool_limits(1, user_api="blas"):
        yield


# -- the Fréchet distance ---------------------------------------------------------------------------------


def test_frechet_distance_matches_pytorch_fid_at_2048_dims():
    rng = np.random.default_rng(0)
    a, b = feature_stats(rng, 4096, 2048), feature_stats(rng, 4096, 2048, shift=0.2, scale=1.2)
    ours, theirs = frechet_distance(*a, *b), reference(*a, *b)
    assert ours == pytest.approx(theirs, rel=1e-3)


@pytest.mark.parametrize("d, n", [(2, 20), (8, 100), (64, 500), (64, 40), (128, 64)])  # n < d: singular
def test_frechet_distance_matches_pytorch_fid_at_small_dims(d, n):
    rng = np.random.default_rng(d + n)
    a, b = feature_stats(rng, n, d), feature_stats(rng, n, d, shift=0.3, scale=1.5)
    assert frechet_distance(*a, *b) == pytest.approx(reference(*a, *b), rel=1e-3)


def test_frechet_distance_of_nearly_identical_statistics():
    rng = np.random.default_rng(1)
    mu, sigma = feature_stats(rng, 1000, 256)
    _, noise = feature_stats(rng, 1000, 256)
    mu2, sigma2 = mu + 1e-3 * rng.standard_normal(256), sigma + 1e-3 * noise
    theirs = reference(mu, sigma, mu2, sigma2)
    assert 0 < theirs < 1e-2 * np.trace(sigma)
    assert frechet_distance(mu, sigma, mu2, sigma2) == pytest.approx(theirs, rel=1e-3)


def test_frechet_distance_is_zero_for_identical_statistics_and_symmetric():
    rng = np.random.default_rng(2)
    a, b = feature_stats(rng, 300, 64), feature_stats(rng, 300, 64, shift=0.5)
    assert abs(frechet_distance(*a, *a)) < 1e-9 * np.trace(a[1])
    assert frechet_distance(*a, *b) == pytest.approx(frechet_distance(*b, *a), rel=1e-9)


def test_frechet_distance_rejects_mismatched_statistics():
    rng = np.random.default_rng(3)
    with pytest.raises(ValueError, match="different dimensions"):
        frechet_distance(*feature_stats(rng, 50, 4), *feature_stats(rng, 50, 5))
    mu, sigma = feature_stats(rng, 50, 4)
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(mu, sigma, mu, np.full_like(sigma, np.nan))


def test_fid_stats_round_trip_through_bytes():
    rng = np.random.default_rng(4)
    stats = FIDStats(*feature_stats(rng, 30, 8), n=30)
    back = FIDStats.from_bytes(stats.to_bytes())
    assert back.n == 30 and back.mu.dtype == back.sigma.dtype == np.float64
    np.testing.assert_array_equal(back.mu, stats.mu)
    np.testing.assert_array_equal(back.sigma, stats.sigma)


def test_moments_in_batches_are_the_mean_and_covariance():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((50, 6)) * 3 + 100  # a large mean: the shift keeps the precision
    moments = Moments()
    for start in range(0, 50, 16):
        moments.add(x[start:start + 16])
    stats = moments.stats()
    np.testing.assert_allclose(stats.mu, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.sigma, np.cov(x, rowvar=False), rtol=1e-9)
    with pytest.raises(ValueError, match="at least 2"):
        single = Moments()
        single.add(x[:1])
        single.stats()
