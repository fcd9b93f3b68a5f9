"""The Fréchet Inception Distance as computed for the paper (Appendix B.4).

    FID = ||mu_g - mu_r||^2 + Tr(S_g + S_r - 2 (S_g S_r)^{1/2})

mu and S are the mean and covariance of pytorch-fid's InceptionV3 features of N generated images (g)
and of all the real ones (r): the 2048-d final average pool, or for dims 64, 192 and 768 an earlier
block's maps averaged over space (pytorch-fid's block indices). Every image first becomes uint8 and
goes through an in-memory image file, as the paper's FIDs were computed from saved files: JPEG (Pillow's
default quality 75, what torchvision's ``save_image`` writes to a .jpg; the paper's choice) or PNG
(lossless). The network then sees floats in [0, 1], resized to 299 x 299.

Backbones:

    inception          the FID Inception weights of pytorch-fid (pt_inception-2015-12-05-6726825d.pth), from
                       $FPA_FID_WEIGHTS, else the torch hub cache, else downloaded into that cache
    inception-random   the same architecture, He-initialised under a fixed seed: the same features in every
                       process, but its FIDs are uncalibrated (comparable with each other, not with published FIDs)

The statistics of a real set are computed once per (dataset fingerprint, resolution, dims, image format,
backbone) and cached as an .npz file in ``cache_dir`` and, when given, ``cache_uri`` (a folder or an
``s3://bucket/prefix``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import numpy as np
import pytorch_fid.inception
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from pytorch_fid.inception import FID_WEIGHTS_URL, InceptionV3
from torch import Tensor, nn

from fpa_core import storage

log = logging.getLogger(__name__)

BACKBONES = ("inception", "inception-random")
IMAGE_FORMATS = ("jpeg", "png")
DIMS = tuple(InceptionV3.BLOCK_INDEX_BY_DIM)  # (64, 192, 768, 2048)
WEIGHTS_ENV = "FPA_FID_WEIGHTS"
WEIGHTS_FILE = FID_WEIGHTS_URL.rsplit("/", 1)[-1]  # pt_inception-2015-12-05-6726825d.pth
WEIGHTS_SHA256_PREFIX = "6726825d"  # the torch hub convention: the hash in the file name starts its sha256
RANDOM_SEED = 0  # of the inception-random backbone
DOWNLOAD_TIMEOUT_S = 30.0  # per connection attempt and per read, so that an offline machine fails fast
_CACHE_VERSION = 1  # part of every cache file's name: bump it when the image pipeline changes
_PIL_FORMATS = {"jpeg": "JPEG", "png": "PNG"}


class FIDWeightsUnavailable(RuntimeError):
    """The FID Inception weights could be neither found nor downloaded; the message says how to provide them."""


# -- the Fréchet distance ---------------------------------------------------------------------------------


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """d^2 = ||mu1 - mu2||^2 + Tr S1 + Tr S2 - 2 Tr (S1 S2)^{1/2}, in float64.

    For any A with S1 = A A^T, the product S1 S2 = A (A^T S2) has the eigenvalues of A^T S2 A (XY and YX
    share their eigenvalues), a symmetric positive semi-definite matrix. So its eigenvalues lambda_i are
    real and >= 0, and

        Tr (S1 S2)^{1/2} = sum_i sqrt(lambda_i(A^T S2 A)),

    one symmetric eigenvalue problem where pytorch-fid takes scipy's sqrtm of the non-symmetric S1 S2 (a
    Schur decomposition, several times slower). A is the Cholesky factor of S1, or U diag(sqrt w) from
    S1 = U diag(w) U^T when S1 is singular. Eigenvalues below 0 from rounding count as 0. The linear
    algebra runs in torch on one CPU thread (see _one_cpu_thread).
    """
    mu1, mu2 = (np.atleast_1d(np.asarray(m, dtype=np.float64)) for m in (mu1, mu2))
    sigma1, sigma2 = (np.atleast_2d(np.asarray(s, dtype=np.float64)) for s in (sigma1, sigma2))
    _check_gaussian(mu1, sigma1)
    _check_gaussian(mu2, sigma2)
    if mu1.shape != mu2.shape:
        raise ValueError(f"statistics of different dimensions: {mu1.shape[0]} and {mu2.shape[0]}")
    with _one_cpu_thread():
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


@contextlib.contextmanager
def _one_cpu_thread():
    """torch's CPU ops on one thread for the duration. LAPACK's symmetric eigensolvers synchronise their
    threads at every step, and when other processes keep the cores busy each wait costs a scheduler time
    slice: on a loaded 2-core machine a 256 x 256 eigvalsh took 2.8 s on two threads and 5 ms on one.
    On one thread, frechet_distance takes about a second at D = 2048, busy machine or not."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _square_root_factor(sigma: Tensor) -> Tensor:
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


class _Moments:
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


# -- images -----------------------------------------------------------------------------------------------


def to_uint8(images: Tensor) -> np.ndarray:
    """(B, 3, H, W) floats in [-1, 1] -> (B, H, W, 3) uint8, rounded as torchvision's save_image:
    floor(255 x + 0.5) of x = (clamp(images, -1, 1) + 1) / 2."""
    x = (images.detach().float().clamp(-1, 1) + 1) / 2
    return x.mul(255).add(0.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def round_trip(images: np.ndarray, image_format: str) -> np.ndarray:
    """(B, H, W, 3) uint8 -> the same after an in-memory JPEG (Pillow's default quality 75) or PNG file."""
    pil_format = _PIL_FORMATS[image_format]
    out = np.empty(images.shape, dtype=np.uint8)
    for i, image in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format=pil_format)
        out[i] = np.asarray(Image.open(buffer, formats=[pil_format]).convert("RGB"))
    return out


def to_unit_float(images: np.ndarray) -> Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 in [0, 1], as torchvision's ToTensor (what pytorch-fid reads)."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(255)


def _check_sampled(images: Tensor, count: int, resolution: tuple[int, int] | None) -> None:
    height, width = resolution or images.shape[-2:]
    if tuple(images.shape) != (count, 3, height, width):
        raise ValueError(f"sample({count}) returned images of shape {tuple(images.shape)}, "
                         f"expected {(count, 3, height, width)}")


def _check_uint8_images(images: np.ndarray) -> None:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(f"expected uint8 images (N, H, W, 3), got {images.dtype} {tuple(images.shape)}")


# -- the Inception network --------------------------------------------------------------------------------


def find_weights(timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """The FID Inception weights file: $FPA_FID_WEIGHTS when set (the file must exist), else
    <torch.hub.get_dir()>/checkpoints/pt_inception-2015-12-05-6726825d.pth, downloaded there first when
    missing. Raises FIDWeightsUnavailable, with what to do, when neither works."""
    configured = os.environ.get(WEIGHTS_ENV)
    if configured:
        path = Path(configured).expanduser()
        if path.is_file():
            return path
        raise FIDWeightsUnavailable(_weights_help(f"${WEIGHTS_ENV} points to {path}, which does not exist"))
    path = Path(torch.hub.get_dir(), "checkpoints", WEIGHTS_FILE)
    if path.is_file():
        return path
    log.info("downloading the FID Inception weights from %s to %s", FID_WEIGHTS_URL, path)
    try:
        with urllib.request.urlopen(FID_WEIGHTS_URL, timeout=timeout) as response:
            data = response.read()
    except OSError as e:
        raise FIDWeightsUnavailable(_weights_help(f"${WEIGHTS_ENV} is not set, {path} does not exist, "
                                                  f"and the download failed ({e})")) from e
    digest = hashlib.sha256(data).hexdigest()
    if not digest.startswith(WEIGHTS_SHA256_PREFIX):
        raise FIDWeightsUnavailable(_weights_help(f"the download from {FID_WEIGHTS_URL} has sha256 {digest}, "
                                                  f"not one starting with {WEIGHTS_SHA256_PREFIX}"))
    storage.write_bytes(path, data)
    return path


def _weights_help(reason: str) -> str:
    hub_path = Path(torch.hub.get_dir(), "checkpoints", WEIGHTS_FILE)
    return (f"The FID Inception weights are unavailable: {reason}.\n"
            f"Download {FID_WEIGHTS_URL} on a machine with internet access and either put it at {hub_path} "
            f"(the torch hub cache; $TORCH_HOME moves it) or set {WEIGHTS_ENV}=/path/to/{WEIGHTS_FILE}.\n"
            "Without the weights, fid.backbone: inception-random computes FIDs with a randomly initialised "
            "Inception: uncalibrated numbers, comparable with each other but not with published FIDs.")


def build_inception(backbone: str = "inception", dims: int = 2048) -> InceptionV3:
    """pytorch-fid's InceptionV3(use_fid_inception=True) returning the block of ``dims``, in eval mode, with
    resize_input and normalize_input: images (B, 3, H, W) in [0, 1] -> [(B, dims, h, w)].

    pytorch-fid's constructor downloads the weights itself (without a timeout, and loading them as full
    pickles); it is handed the trunk built here instead, for the duration of the call."""
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {BACKBONES}, got {backbone!r}")
    if dims not in DIMS:
        raise ValueError(f"dims must be one of {DIMS}, got {dims}")
    with torch.random.fork_rng(devices=[]):  # the caller's random stream is left as it was
        torch.manual_seed(RANDOM_SEED)
        trunk = fid_inception_architecture()
        if backbone == "inception-random":
            _he_init(trunk)
    if backbone == "inception":
        trunk.load_state_dict(torch.load(find_weights(), map_location="cpu", weights_only=True))
    with mock.patch.object(pytorch_fid.inception, "fid_inception_v3", lambda: trunk):
        model = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[dims]], resize_input=True, normalize_input=True)
    return model.eval()


def fid_inception_architecture() -> nn.Module:
    """pytorch_fid.inception.fid_inception_v3 without its weights: torchvision's Inception3 (1008 classes,
    no auxiliary head) with the FID variants of the mixed blocks (TensorFlow's pooling)."""
    fid = pytorch_fid.inception
    inception = torchvision.models.inception_v3(weights=None, num_classes=1008, aux_logits=False, init_weights=False)
    inception.Mixed_5b = fid.FIDInceptionA(192, pool_features=32)
    inception.Mixed_5c = fid.FIDInceptionA(256, pool_features=64)
    inception.Mixed_5d = fid.FIDInceptionA(288, pool_features=64)
    inception.Mixed_6b = fid.FIDInceptionC(768, channels_7x7=128)
    inception.Mixed_6c = fid.FIDInceptionC(768, channels_7x7=160)
    inception.Mixed_6d = fid.FIDInceptionC(768, channels_7x7=160)
    inception.Mixed_6e = fid.FIDInceptionC(768, channels_7x7=192)
    inception.Mixed_7b = fid.FIDInceptionE_1(1280)
    inception.Mixed_7c = fid.FIDInceptionE_2(2048)
    return inception


def _he_init(model: nn.Module) -> None:
    """Convolutions He-normal (fan in, ReLU gain), batch norms left at identity: the features keep an O(1)
    scale through the dozens of conv-ReLU layers, where PyTorch's default init shrinks them to ~1e-8."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")


class InceptionFeatures:
    """pytorch-fid's InceptionV3 as a function: images (B, 3, H, W) in [0, 1] -> features (B, dims) float64,
    each block output averaged over space as pytorch-fid does (the 2048-d pool output is already 1 x 1)."""

    def __init__(self, backbone: str = "inception", dims: int = 2048, device: str | torch.device = "cpu"):
        self.backbone, self.dims, self.device = backbone, dims, torch.device(device)
        self.model = build_inception(backbone, dims).to(self.device)

    @property
    def calibrated(self) -> bool:
        return self.backbone == "inception"

    def __call__(self, images: Tensor) -> np.ndarray:
        with torch.no_grad():
            out = self.model(images.to(self.device))[0]  # (B, dims, h, w)
            return F.adaptive_avg_pool2d(out, output_size=(1, 1)).flatten(1).double().cpu().numpy()  # (B, dims)


# -- the evaluator ----------------------------------------------------------------------------------------


def default_cache_dir() -> str:
    """$FPA_CACHE_DIR/fid, else ~/.cache/fpa/fid."""
    base = os.environ.get("FPA_CACHE_DIR")
    return str(Path(base, "fid") if base else Path.home() / ".cache" / "fpa" / "fid")


def cache_name(fingerprint: str, resolution: tuple[int, int], dims: int, image_format: str, backbone: str) -> str:
    """The cache file of a real set's statistics: every part of the key in the name, the fingerprint hashed."""
    height, width = resolution
    digest = hashlib.sha256(fingerprint.encode()).hexdigest()[:16]
    return f"real-v{_CACHE_VERSION}-{backbone}-{dims}d-{image_format}-{height}x{width}-{digest}.npz"


class FIDEvaluator:
    """FIDs of a generator against a real image set, with the real statistics cached.

    ``cache_dir`` (default: default_cache_dir()) is looked in first, then ``cache_uri`` (a folder or an
    s3:// prefix); what is computed or found in one is written to the other where it is missing.
    """

    def __init__(self, backbone: str = "inception", dims: int = 2048, image_format: str = "jpeg",
                 batch_size: int = 50, device: str | torch.device = "cpu", cache_dir: str | os.PathLike | None = None,
                 cache_uri: str | None = None):
        if image_format not in IMAGE_FORMATS:
            raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        self.backbone, self.dims, self.image_format, self.batch_size = backbone, dims, image_format, batch_size
        self.cache_dir = str(cache_dir) if cache_dir is not None else default_cache_dir()
        self.cache_uri = cache_uri
        self.extractor = InceptionFeatures(backbone, dims, device)
        self._real: dict[str, FIDStats] = {}  # statistics already read or computed by this evaluator

    @property
    def calibrated(self) -> bool:
        """True only with the FID Inception weights: then the numbers compare with published FIDs."""
        return self.extractor.calibrated

    @property
    def label(self) -> str:
        return "FID" if self.calibrated else f"FID (uncalibrated: {self.backbone} backbone)"

    def features(self, images: np.ndarray) -> np.ndarray:
        """(B, H, W, 3) uint8 -> (B, dims) float64, after the image file round trip."""
        return self.extractor(to_unit_float(round_trip(images, self.image_format)))

    def real_stats(self, images: np.ndarray, fingerprint: str) -> FIDStats:
        """The statistics of the real images (N, H, W, 3) uint8, from the caches or computed and cached."""
        _check_uint8_images(images)
        name = cache_name(fingerprint, images.shape[1:3], self.dims, self.image_format, self.backbone)
        caches = [storage.join(self.cache_dir, name)] + ([storage.join(self.cache_uri, name)] if self.cache_uri else [])
        if name in self._real:
            return self._real[name]
        for i, uri in enumerate(caches):
            stats = _read_stats(uri)
            if stats is not None:
                log.info("FID statistics of the real images: cache hit %s", uri)
                for other in caches[:i] + [c for c in caches[i + 1:] if not storage.exists(c)]:
                    _write_stats(other, stats)
                break
        else:
            log.info("computing the FID statistics of %d real images (%s)", len(images), name)
            moments = _Moments()
            for start in range(0, len(images), self.batch_size):
                moments.add(self.features(images[start:start + self.batch_size]))
            stats = moments.stats()
            for uri in caches:
                _write_stats(uri, stats)
        self._real[name] = stats
        return stats

    def generated_stats(self, sample: Callable[[int], Tensor], n: int,
                        resolution: tuple[int, int] | None = None) -> FIDStats:
        """The statistics of n images from ``sample(batch_size) -> (B, 3, H, W) in [-1, 1]``, drawn in
        batches of at most ``batch_size``; with ``resolution``, every batch must be (H, W) = resolution."""
        moments = _Moments()
        for start in range(0, n, self.batch_size):
            count = min(self.batch_size, n - start)
            images = sample(count)  # (count, 3, H, W)
            _check_sampled(images, count, resolution)
            moments.add(self.features(to_uint8(images)))
        return moments.stats()

    def fid(self, sample: Callable[[int], Tensor], n: int, real_images: np.ndarray, fingerprint: str) -> float:
        """The FID of n sampled images against the real images (N, H, W, 3) uint8 (Appendix B.4)."""
        real = self.real_stats(real_images, fingerprint)
        generated = self.generated_stats(sample, n, resolution=tuple(real_images.shape[1:3]))
        return frechet_distance(generated.mu, generated.sigma, real.mu, real.sigma)


def _read_stats(uri: str) -> FIDStats | None:
    try:
        return FIDStats.from_bytes(storage.read_bytes(uri))
    except FileNotFoundError:
        return None


def _write_stats(uri: str, stats: FIDStats) -> None:
    storage.write_bytes(uri, stats.to_bytes())
    log.info("FID statistics of the real images: cached at %s", uri)
