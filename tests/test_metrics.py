"""Scores of an evaluation: KID and precision/recall against loops written here, the image pipeline, the
evaluator's cache of real sets, and a collapsed generator scored with the real FID Inception."""

import numpy as np
import pytest
import torch

from fpa_core import images
from fpa_core.metrics import evaluator as metrics
from fpa_core.metrics.kid import kernel_inception_distance
from fpa_core.metrics import best_evaluation
from fpa_core.metrics.evaluator import Evaluator, RealSet, Scores, cache_name, latent_sampler
from fpa_core.metrics.precision_recall import precision_recall


def relu_features(rng, n, d, shift=0.0):
    mix = rng.standard_normal((d, d)) / np.sqrt(d)
    return np.maximum(rng.standard_normal((n, d)) @ mix + shift, 0)


def as_samples(images_uint8):
    """A sampler that hands out the given (N, H, W, 3) uint8 images in order, as floats in [-1, 1]."""
    floats = images.to_tensor(images_uint8)
    position = 0

    def sample(count):
        nonlocal position
        position += count
        return floats[position - count:position]

    return sample


# -- KID ---------------------------------------------------------------------------------------------------


def mmd2_loop(x, y):
    """The unbiased MMD^2 with k(a, b) = (a . b / d + 1)^3, one pair at a time."""
    m, d = x.shape
    k = lambda a, b: (a @ b / d + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_of_one_subset_is_the_unbiased_mmd_of_the_loop():
    rng = np.random.default_rng(0)
    x, y = relu_features(rng, 12, 6), relu_features(rng, 12, 6, shift=0.3)
    kid, std = kernel_inception_distance(x, y, num_subsets=1, subset_size=12)
    assert kid == pytest.approx(mmd2_loop(x, y), rel=1e-6) and std == 0


def test_kid_averages_subsets_drawn_without_replacement():
    rng = np.random.default_rng(1)
    x, y = relu_features(rng, 30, 5), relu_features(rng, 40, 5, shift=0.2)
    kid, std = kernel_inception_distance(x, y, num_subsets=7, subset_size=10, seed=3)
    draws, values = np.random.default_rng(3), []
    for _ in range(7):
        xs, ys = x[draws.choice(30, 10, replace=False)], y[draws.choice(40, 10, replace=False)]
        values.append(mmd2_loop(xs, ys))
    assert kid == pytest.approx(np.mean(values), rel=1e-6) and std == pytest.approx(np.std(values), rel=1e-5)


def test_kid_is_unbiased_where_fid_is_not():
    """Pairs of 50-image samples of one distribution: their KIDs centre on 0, their FIDs are all well above it."""
    from fpa_core.metrics.fid import frechet_distance

    rng = np.random.default_rng(2)
    population = relu_features(rng, 4000, 16)
    kids, fids = [], []
    for _ in range(60):
        a, b = (population[rng.choice(4000, 50, replace=False)] for _ in range(2))
        kids.append(kernel_inception_distance(a, b, num_subsets=1, subset_size=50)[0])
        fids.append(frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)))
    assert abs(np.mean(kids)) < 3 * np.std(kids) / np.sqrt(len(kids))
    assert np.mean(fids) > 10 * np.std(fids) / np.sqrt(len(fids)) and min(fids) > 0
    shifted = relu_features(np.random.default_rng(3), 50, 16, shift=0.5)
    assert kernel_inception_distance(shifted, population[:50], num_subsets=1)[0] > 5 * np.std(kids)


def test_kid_rejects_too_few_or_mismatched_features():
    with pytest.raises(ValueError, match="at least 2"):
        kernel_inception_distance(np.zeros((1, 4)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="expected features"):
        kernel_inception_distance(np.zeros((3, 4)), np.zeros((5, 3)))


# -- precision and recall ------------------------------------------------------------------------------------


def pr_loop(fake, real, k):
    def radii(points):
        return [sorted(np.linalg.norm(points - p, axis=1))[k] for p in points]

    def inside(q, centres, r):
        return any(np.linalg.norm(q - c) <= rc for c, rc in zip(centres, r))

    real_r, fake_r = radii(real), radii(fake)
    return (np.mean([inside(f, real, real_r) for f in fake]), np.mean([inside(r, fake, fake_r) for r in real]))


def test_precision_and_recall_match_the_loop():
    rng = np.random.default_rng(4)
    real, fake = rng.standard_normal((40, 3)), rng.standard_normal((30, 3)) * 0.6 + 0.8
    got = precision_recall(fake, real, k=3)
    expected = pr_loop(fake, real, 3)
    assert got == pytest.approx(expected, abs=1e-12) and 0 < got[0] < 1 and 0 < got[1] < 1


def test_a_collapsed_set_has_no_recall_and_the_real_set_has_both():
    rng = np.random.default_rng(5)
    real = rng.standard_normal((200, 8))
    collapsed = real[:1] + 0.01 * rng.standard_normal((100, 8))
    precision, recall = precision_recall(collapsed, real)
    assert precision == 1.0 and recall < 0.05
    assert min(precision_recall(rng.standard_normal((200, 8)), real)) > 0.6


# -- images ------------------------------------------------------------------------------------------------


def test_png_round_trip_is_lossless_and_jpeg_is_not():
    pictures = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    np.testing.assert_array_equal(images.round_trip(pictures, "png"), pictures)
    jpeg = images.round_trip(pictures, "jpeg")
    assert jpeg.shape == pictures.shape and np.abs(jpeg.astype(int) - pictures).mean() > 1
    np.testing.assert_array_equal(images.round_trip(pictures, "jpeg"), jpeg)


def test_uint8_conversions_invert_each_other_and_grey_becomes_three_channels():
    pictures = np.random.default_rng(1).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    floats = images.to_tensor(pictures)  # (3, 3, 8, 8) in [-1, 1]
    np.testing.assert_array_equal(images.to_uint8(floats), pictures)
    ramp = torch.tensor([-3.0, -1.0, 0.0, 1.0, 3.0]).view(1, 1, 1, 5)  # one channel, clamped, rounded
    np.testing.assert_array_equal(images.to_uint8(ramp)[0, 0], np.array([0, 0, 128, 255, 255])[:, None].repeat(3, 1))
    torch.testing.assert_close(images.to_unit_float(pictures), (floats + 1) / 2)
    grey = np.repeat(pictures[..., :1], 3, axis=3)
    torch.testing.assert_close(images.to_tensor(grey, channels=1), images.to_tensor(grey)[:, :1])


# -- the evaluator -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def random_evaluator(tmp_path_factory):
    return Evaluator(backbone="inception-random", dims=64, batch_size=8, cache_dir=tmp_path_factory.mktemp("fid"))


def test_the_real_set_is_every_images_statistics_and_features(random_evaluator, digits_16):
    real = random_evaluator.real_set(digits_16[:20], "twenty digits")
    features = random_evaluator.features(digits_16[:20])  # (20, 64)
    assert real.stats.n == 20 and real.features.shape == (20, 64) and real.features.dtype == np.float32
    np.testing.assert_allclose(real.stats.mu, features.mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(real.stats.sigma, np.cov(features, rowvar=False), rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(real.features, features, rtol=1e-6)


def test_real_sets_are_cached_locally_and_at_the_cache_uri_keyed_by_the_weights(tmp_path, digits_16, monkeypatch):
    local, remote = tmp_path / "local", tmp_path / "remote"
    evaluator = Evaluator(backbone="inception-random", dims=64, batch_size=8, cache_dir=local, cache_uri=str(remote))
    computed = []
    monkeypatch.setattr(evaluator, "features", lambda x, f=evaluator.features: computed.append(len(x)) or f(x))
    real = evaluator.real_set(digits_16[:16], "digits")
    assert computed == [8, 8]
    name = cache_name("digits", (16, 16), 64, "jpeg", evaluator.weights_sha256)
    assert (local / name).is_file() and (remote / name).is_file()
    evaluator.real_set(digits_16[:16], "digits")
    assert computed == [8, 8]  # not recomputed

    fresh = Evaluator(backbone="inception-random", dims=64, cache_dir=tmp_path / "empty", cache_uri=str(remote))
    np.testing.assert_array_equal(fresh.real_set(digits_16[:16], "digits").features, real.features)
    assert (tmp_path / "empty" / name).is_file()

    calibrated = Evaluator(backbone="inception", dims=64, cache_dir=local)
    assert cache_name("digits", (16, 16), 64, "jpeg", calibrated.weights_sha256) != name


def test_the_real_features_kept_are_a_fixed_subset_of_large_sets(monkeypatch, random_evaluator, digits_16):
    monkeypatch.setattr(metrics, "MAX_FEATURES", 10)
    real = random_evaluator.real_set(digits_16[:25], "twenty-five digits")
    assert real.stats.n == 25 and real.features.shape == (10, 64)
    kept = metrics._subset(25)
    np.testing.assert_allclose(real.features, random_evaluator.features(digits_16[:25])[kept], rtol=1e-6)
    np.testing.assert_array_equal(RealSet.from_bytes(real.to_bytes()).features, real.features)


def test_cache_name_changes_with_every_part_of_the_key():
    key = {"fingerprint": "abc", "resolution": (64, 64), "dims": 2048, "image_format": "jpeg",
           "weights_sha256": "64a9c03be395854c"}
    variants = [{"fingerprint": "abd"}, {"resolution": (32, 32)}, {"resolution": (64, 32)}, {"dims": 768},
                {"image_format": "png"}, {"weights_sha256": "0123456789abcdef"}]
    names = {cache_name(**key)} | {cache_name(**{**key, **v}) for v in variants}
    assert len(names) == 1 + len(variants)
    odd = cache_name(**{**key, "fingerprint": "../a/b c"})  # the fingerprint appears only hashed
    assert "/" not in odd and " " not in odd and odd.endswith(".npz")


def test_the_cache_folder_follows_fpa_cache_dir(tmp_path, monkeypatch):
    from fpa_core.cache import cache_dir

    monkeypatch.setenv("FPA_CACHE_DIR", str(tmp_path))
    assert cache_dir("fid") == tmp_path / "fid"
    monkeypatch.delenv("FPA_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir("fid") == tmp_path / ".cache" / "fpa" / "fid"


def test_scores_end_to_end_and_in_batches(random_evaluator, digits_16):
    assert not random_evaluator.calibrated
    assert random_evaluator.label == "FID (uncalibrated: inception-random backbone)"
    same = random_evaluator.scores(as_samples(digits_16[:20]), 20, digits_16[:20], "twenty digits")
    assert isinstance(same, Scores) and abs(same.fid) < 1e-6 and same.precision == same.recall == 1.0
    sizes = []

    def noise(count):
        sizes.append(count)
        return torch.rand(count, 1, 16, 16, generator=torch.Generator().manual_seed(count)) * 2 - 1

    other = random_evaluator.scores(noise, 20, digits_16[:20], "twenty digits")
    assert sizes == [8, 8, 4] and other.fid > 1e-3 and other.kid > same.kid and other.num_images == 20


def test_bad_samples_and_settings_are_refused(random_evaluator, digits_16):
    with pytest.raises(ValueError, match=r"expected \(8, 1 or 3, 16, 16\)"):
        random_evaluator.scores(lambda count: torch.zeros(count, 3, 32, 32), 16, digits_16[:16], "digits")
    with pytest.raises(ValueError, match="at least 2 generated images"):
        random_evaluator.scores(lambda count: torch.zeros(count, 3, 16, 16), 1, digits_16[:16], "digits")
    with pytest.raises(ValueError, match="at least 2"):
        random_evaluator.real_set(digits_16[:1], "one digit")
    for kwargs, match in [({"backbone": "resnet"}, "backbone"), ({"dims": 100}, "dims"),
                          ({"image_format": "webp"}, "image_format"), ({"batch_size": 0}, "batch_size")]:
        with pytest.raises(ValueError, match=match):
            Evaluator(**{"backbone": "inception-random", "dims": 64, **kwargs})


def test_the_best_evaluation_is_the_lowest_of_the_metric_and_the_earliest_of_ties():
    evaluations = [{"step": 1, "fid": 3.0, "kid": 0.2}, {"step": 2, "fid": 2.0, "kid": 0.3},
                   {"step": 3, "fid": 2.0, "kid": float("nan")}, {"step": 4, "fid": 5.0}]
    assert best_evaluation(evaluations, "fid")["step"] == 2 and best_evaluation(evaluations, "kid")["step"] == 1
    assert best_evaluation([], "fid") is None


def test_the_latent_sampler_repeats_its_stream_and_leaves_the_global_rng_alone():
    class Painter(torch.nn.Module):
        config = type("Config", (), {"d_latent": 4})

        def forward(self, z):
            return z[:, :1, None, None].expand(-1, 1, 2, 2).tanh()

    torch.manual_seed(0)
    before = torch.get_rng_state()
    first = torch.cat([latent_sampler(Painter(), 3, 100)(5), latent_sampler(Painter(), 3, 100)(2)])
    sampler = latent_sampler(Painter(), 3, 100)
    torch.testing.assert_close(torch.cat([sampler(5), sampler(2)])[:5], first[:5])
    assert torch.equal(torch.get_rng_state(), before)
    assert not torch.equal(latent_sampler(Painter(), 3, 101)(5), first[:5])


# -- the real network on a collapsed generator ---------------------------------------------------------------


@pytest.mark.inception
def test_a_collapsed_generator_scores_worse_than_real_digits_and_has_no_recall(tmp_path, digits_16):
    """With the calibrated FID Inception (2048-d): 60 held-out digits against 120 real ones, then 60 copies of
    one blurred digit (what the packaged digits config painted before its recipe was fixed)."""
    evaluator = Evaluator(backbone="inception", dims=2048, batch_size=60, cache_dir=tmp_path)
    assert evaluator.calibrated
    real = digits_16[:120]
    held_out = evaluator.scores(as_samples(digits_16[120:180]), 60, real, "120 digits")
    blob = images.to_tensor(digits_16[:1]).repeat(60, 1, 1, 1)
    blob = torch.nn.functional.avg_pool2d(blob, 3, stride=1, padding=1) + 0.02 * torch.randn(60, 3, 16, 16)
    collapsed = evaluator.scores(lambda n: blob[:n].clamp(-1, 1), 60, real, "120 digits")
    assert collapsed.fid > 2 * held_out.fid and collapsed.kid > 10 * max(held_out.kid, 1e-3)
    assert collapsed.recall < 0.05 < 0.3 < held_out.recall and held_out.precision > 0.5
