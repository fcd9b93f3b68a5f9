"""FID (Appendix B.4): the Fréchet distance against pytorch-fid's, the backbones and their weights, the
image round trip and the cache of real statistics. Networks run at dims=64 (the first block only)."""

import hashlib
import io
import subprocess
import sys
import urllib.error
import warnings

import numpy as np
import pytest
import pytorch_fid.inception
import torch
from pytorch_fid.fid_score import calculate_frechet_distance
from threadpoolctl import threadpool_limits

from fpa_core import fid
from fpa_core.fid import FIDEvaluator, FIDStats, FIDWeightsUnavailable, InceptionFeatures, frechet_distance


def feature_stats(rng, n, d, shift=0.0, scale=1.0):
    """Mean and covariance of n ReLU'd, correlated d-dimensional features, like pooled activations."""
    mix = rng.standard_normal((d, d)) * scale / np.sqrt(d)
    x = np.maximum(rng.standard_normal((n, d)) @ mix + shift, 0)  # (n, d)
    return x.mean(axis=0), np.cov(x, rowvar=False)


def reference(mu1, sigma1, mu2, sigma2):
    with warnings.catch_warnings():  # scipy's sqrtm warns on the singular covariances of n < d
        warnings.simplefilter("ignore")
        return float(calculate_frechet_distance(mu1, sigma1, mu2, sigma2))


def as_samples(images_uint8):
    """A sampler that hands out the given (N, H, W, 3) uint8 images in order, as floats in [-1, 1]."""
    floats = torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float() / 127.5 - 1
    position = 0

    def sample(count):
        nonlocal position
        position += count
        return floats[position - count:position]

    return sample


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    """numpy's and scipy's OpenBLAS on one thread: on a busy 2-core machine their spinning threads make
    pytorch-fid's sqrtm at 2048 dims several times slower (about 15 s instead of 50 s)."""
    with threadpool_limits(1, user_api="blas"):
        yield


@pytest.fixture(scope="module")
def real_images():
    return np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def evaluator(tmp_path_factory):
    return FIDEvaluator(backbone="inception-random", dims=64, batch_size=5, cache_dir=tmp_path_factory.mktemp("fid"))


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """A file shaped as the FID Inception weights: the architecture's state dict, default-initialised."""
    torch.manual_seed(1)
    state_dict = fid.fid_inception_architecture().state_dict()
    path = tmp_path_factory.mktemp("weights") / fid.WEIGHTS_FILE
    torch.save(state_dict, path)
    return path, state_dict


@pytest.fixture
def no_weights(tmp_path, monkeypatch):
    """An empty torch hub cache, no $FPA_FID_WEIGHTS, and a network that refuses at once."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.delenv(fid.WEIGHTS_ENV, raising=False)
    calls = []

    def offline(url, timeout=None):
        calls.append((url, timeout))
        raise urllib.error.URLError("no network in this test")

    monkeypatch.setattr(fid.urllib.request, "urlopen", offline)
    return calls


def counting(evaluator):
    calls = []
    extract = evaluator.extractor

    def wrapper(images):
        calls.append(len(images))
        return extract(images)

    evaluator.extractor = wrapper
    return calls


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


# -- backbones and weights --------------------------------------------------------------------------------


def test_missing_weights_file_raises_the_fix(tmp_path, monkeypatch, no_weights):
    missing = tmp_path / "nowhere" / fid.WEIGHTS_FILE
    monkeypatch.setenv(fid.WEIGHTS_ENV, str(missing))
    with pytest.raises(FIDWeightsUnavailable) as error:
        FIDEvaluator(backbone="inception", dims=64, cache_dir=tmp_path)
    message = str(error.value)
    assert str(missing) in message and fid.FID_WEIGHTS_URL in message and fid.WEIGHTS_ENV in message
    assert "inception-random" in message and "uncalibrated" in message
    assert no_weights == []  # a configured path is not silently replaced by a download


def test_no_weights_anywhere_tries_one_download_with_a_timeout(tmp_path, no_weights):
    with pytest.raises(FIDWeightsUnavailable) as error:
        InceptionFeatures("inception", dims=64)
    hub_file = tmp_path / "torch-home" / "hub" / "checkpoints" / fid.WEIGHTS_FILE
    message = str(error.value)
    assert str(hub_file) in message and "download failed" in message and "inception-random" in message
    assert no_weights == [(fid.FID_WEIGHTS_URL, fid.DOWNLOAD_TIMEOUT_S)]


def test_weights_from_the_environment_load_and_are_calibrated(monkeypatch, weights_file):
    path, state_dict = weights_file
    monkeypatch.setenv(fid.WEIGHTS_ENV, str(path))
    evaluator = FIDEvaluator(backbone="inception", dims=64)
    assert evaluator.calibrated and evaluator.label == "FID"
    first_conv = evaluator.extractor.model.blocks[0][0].conv.weight
    torch.testing.assert_close(first_conv, state_dict["Conv2d_1a_3x3.conv.weight"], rtol=0, atol=0)


def test_downloaded_weights_are_checked_and_kept_in_the_hub_cache(tmp_path, monkeypatch, no_weights, weights_file):
    data = weights_file[0].read_bytes()
    monkeypatch.setattr(fid.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(data))
    with pytest.raises(FIDWeightsUnavailable, match="sha256"):
        fid.find_weights()
    monkeypatch.setattr(fid, "WEIGHTS_SHA256_PREFIX", hashlib.sha256(data).hexdigest()[:8])
    path = fid.find_weights()
    assert path == tmp_path / "torch-home" / "hub" / "checkpoints" / fid.WEIGHTS_FILE
    assert path.read_bytes() == data
    assert InceptionFeatures("inception", dims=64).calibrated


def test_our_architecture_is_pytorch_fids(weights_file):
    """pytorch-fid's own fid_inception_v3, its download replaced by our state dict, loads it strictly."""
    _, state_dict = weights_file
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pytorch_fid.inception, "load_state_dict_from_url", lambda url, progress: state_dict)
        theirs = pytorch_fid.inception.fid_inception_v3()
    ours = fid.fid_inception_architecture()
    assert [(n, type(m)) for n, m in ours.named_modules()] == [(n, type(m)) for n, m in theirs.named_modules()]


def test_random_backbone_is_deterministic_uncalibrated_and_leaves_the_global_rng_alone():
    images = torch.linspace(0, 1, 2 * 3 * 32 * 32).view(2, 3, 32, 32)
    torch.manual_seed(5)
    first = InceptionFeatures("inception-random", dims=64)
    after = torch.rand(3)
    torch.manual_seed(5)
    torch.testing.assert_close(torch.rand(3), after)
    second = InceptionFeatures("inception-random", dims=64)
    features = first(images)
    assert features.shape == (2, 64) and features.dtype == np.float64 and features.std() > 1e-3
    np.testing.assert_array_equal(features, second(images))
    assert not first.calibrated


def test_random_backbone_is_the_same_in_another_process():
    code = ("import hashlib, torch\n"
            "from fpa_core.fid import InceptionFeatures\n"
            "model = InceptionFeatures('inception-random', dims=64).model\n"
            "print(hashlib.sha256(b''.join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest())\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    model = InceptionFeatures("inception-random", dims=64).model
    here = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()
    assert result.stdout.strip() == here


@pytest.mark.parametrize("kwargs, match", [({"backbone": "resnet"}, "backbone"), ({"dims": 100}, "dims"),
                                           ({"image_format": "webp"}, "image_format"),
                                           ({"batch_size": 0}, "batch_size")])
def test_evaluator_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FIDEvaluator(**{"backbone": "inception-random", "dims": 64, **kwargs})


# -- images -----------------------------------------------------------------------------------------------


def test_png_round_trip_is_lossless_and_jpeg_is_not(real_images):
    np.testing.assert_array_equal(fid.round_trip(real_images, "png"), real_images)
    jpeg = fid.round_trip(real_images, "jpeg")
    assert jpeg.shape == real_images.shape and jpeg.dtype == np.uint8
    assert np.abs(jpeg.astype(int) - real_images).mean() > 1
    np.testing.assert_array_equal(fid.round_trip(real_images, "jpeg"), jpeg)


def test_uint8_conversions_invert_each_other(real_images):
    floats = torch.from_numpy(real_images).permute(0, 3, 1, 2).float() / 127.5 - 1  # (N, 3, H, W)
    np.testing.assert_array_equal(fid.to_uint8(floats), real_images)
    ramp = torch.tensor([-3.0, -1.0, 0.0, 1.0, 3.0]).view(1, 1, 1, 5).expand(1, 3, 1, 5)  # clamped, rounded
    np.testing.assert_array_equal(fid.to_uint8(ramp)[0, 0], np.array([0, 0, 128, 255, 255])[:, None].repeat(3, 1))
    unit = fid.to_unit_float(real_images)
    assert unit.shape == (16, 3, 32, 32) and unit.dtype == torch.float32
    torch.testing.assert_close(unit, (floats + 1) / 2)


# -- the evaluator ----------------------------------------------------------------------------------------


def test_real_stats_are_the_mean_and_covariance_of_the_features(evaluator, real_images):
    stats = evaluator.real_stats(real_images, "mean and covariance")
    features = evaluator.features(real_images)  # (16, 64)
    assert stats.n == 16
    np.testing.assert_allclose(stats.mu, features.mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(stats.sigma, np.cov(features, rowvar=False), rtol=1e-7, atol=1e-12)


def test_real_stats_are_cached_locally_and_at_the_cache_uri(tmp_path, real_images):
    local, remote = tmp_path / "local", tmp_path / "remote"
    evaluator = FIDEvaluator(backbone="inception-random", dims=64, batch_size=8, cache_dir=local, cache_uri=str(remote))
    calls = counting(evaluator)
    stats = evaluator.real_stats(real_images, "digits")
    assert calls == [8, 8]
    name = fid.cache_name("digits", (32, 32), 64, "jpeg", "inception-random")
    assert (local / name).is_file() and (remote / name).is_file()

    again = evaluator.real_stats(real_images, "digits")
    assert calls == [8, 8]  # not recomputed
    np.testing.assert_array_equal(again.sigma, stats.sigma)

    fresh = FIDEvaluator(backbone="inception-random", dims=64, cache_dir=tmp_path / "empty", cache_uri=str(remote))
    fresh_calls = counting(fresh)
    np.testing.assert_array_equal(fresh.real_stats(real_images, "digits").mu, stats.mu)
    assert fresh_calls == [] and (tmp_path / "empty" / name).is_file()

    evaluator.real_stats(real_images, "another dataset")
    evaluator.real_stats(real_images[:, :16, :16], "digits")
    assert calls == [8, 8, 8, 8, 8, 8]


def test_cache_name_changes_with_every_part_of_the_key():
    key = {"fingerprint": "abc", "resolution": (64, 64), "dims": 2048, "image_format": "jpeg", "backbone": "inception"}
    variants = [{"fingerprint": "abd"}, {"resolution": (32, 32)}, {"resolution": (64, 32)}, {"dims": 768},
                {"image_format": "png"}, {"backbone": "inception-random"}]
    names = {fid.cache_name(**key)} | {fid.cache_name(**{**key, **v}) for v in variants}
    assert len(names) == 1 + len(variants)
    odd = fid.cache_name(**{**key, "fingerprint": "../a/b c"})  # the fingerprint appears only hashed
    assert "/" not in odd and " " not in odd and odd.endswith(".npz")


def test_default_cache_dir_follows_fpa_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("FPA_CACHE_DIR", str(tmp_path))
    assert fid.default_cache_dir() == str(tmp_path / "fid")
    monkeypatch.delenv("FPA_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert fid.default_cache_dir() == str(tmp_path / ".cache" / "fpa" / "fid")


def test_tiny_fid_end_to_end(evaluator, real_images):
    assert not evaluator.calibrated and evaluator.label == "FID (uncalibrated: inception-random backbone)"
    assert abs(evaluator.fid(as_samples(real_images), 16, real_images, "tiny")) < 1e-6

    generator = torch.Generator().manual_seed(0)
    sizes = []

    def noise(count):
        sizes.append(count)
        return torch.rand(count, 3, 32, 32, generator=generator) * 2 - 1

    value = evaluator.fid(noise, 16, real_images, "tiny")
    assert np.isfinite(value) and value > 1e-4 and isinstance(value, float)
    assert sizes == [5, 5, 5, 1]


def test_generated_images_must_match_the_real_resolution(evaluator, real_images):
    with pytest.raises(ValueError, match=r"expected \(5, 3, 32, 32\)"):
        evaluator.fid(lambda count: torch.zeros(count, 3, 64, 64), 16, real_images, "tiny")
