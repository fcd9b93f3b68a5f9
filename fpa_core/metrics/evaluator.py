"""The scores of a generator at an evaluation: FID, KID, precision and recall, all from one set of features.

    images (B, C, H, W) in [-1, 1] -> uint8 -> an in-memory JPEG or PNG file -> [0, 1] -> Inception -> features

Every image goes through an image file as the paper's FIDs did (Appendix B.4): JPEG (Pillow's default
quality 75, what torchvision's ``save_image`` writes; the paper's choice) or PNG (lossless). Then

    fid                 fpa_core.metrics.fid: the Fréchet distance of the features' Gaussians (all real images)
    kid, kid_std        fpa_core.metrics.kid: the unbiased polynomial-kernel MMD^2, mean and std over 100 subsets
    precision, recall   fpa_core.metrics.precision_recall: k-NN manifolds (k = 3) of the two sets

KID and precision/recall use up to MAX_FEATURES features of each side (a fixed random choice of the real
ones; FID's statistics use every real image). The real set's statistics and features are computed once
per (weights, dims, image format, resolution, dataset fingerprint) and cached as an .npz file in the
cache folder and, when given, ``cache_uri`` (a folder or an ``s3://bucket/prefix``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fpa_core import cache, storage
from fpa_core.metrics import weights as inception_weights
from fpa_core.metrics import BACKBONES
from fpa_core.metrics.fid import FIDStats, Moments, frechet_distance
from fpa_core.images import IMAGE_FORMATS, check_uint8_images, round_trip, to_uint8, to_unit_float
from fpa_core.metrics.inception import DIMS, build
from fpa_core.metrics.kid import kernel_inception_distance
from fpa_core.metrics.precision_recall import precision_recall

log = logging.getLogger(__name__)

MAX_FEATURES = 10_000  # per side, for KID and precision/recall
_CACHE_VERSION = 2  # part of every cache file's name: bump it when the image pipeline changes
_SUBSET_SEED = 0


@dataclass
class Scores:
    """One evaluation of n generated images."""

    fid: float
    kid: float
    kid_std: float
    precision: float
    recall: float
    num_images: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def latent_sampler(generator: torch.nn.Module, seed: int, step: int, device: str | torch.device = "cpu",
                   value_range: tuple[float, float] = (-1.0, 1.0)) -> Callable[[int], Tensor]:
    """``sample(n)``: the images an evaluation at ``step`` scores, n at a time, from latents drawn by a private
    generator seeded by (seed, step) (the training run's stream is untouched), in float32 without autocast,
    mapped from the data's ``value_range`` to [-1, 1]."""
    device = torch.device(device)
    rng = torch.Generator(device=device).manual_seed(seed * 1_000_003 + step)
    d_latent = generator.config.d_latent
    low, high = value_range

    def sample(n: int) -> Tensor:
        z = torch.randn(n, d_latent, generator=rng, device=device)
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            images = generator(z).float()
        return images if (low, high) == (-1.0, 1.0) else (images - low) / (high - low) * 2 - 1

    return sample


class InceptionFeatures:
    """A backbone's features as a function: images (B, 3, H, W) in [0, 1] -> (B, dims) float64.

    ``weights.sha256`` names the network (it keys every cache of real features). The network runs in
    float32, channels-last (twice the throughput of the default layout on a CPU), without autocast or TF32,
    so that its numbers do not depend on the caller's precision settings.
    """

    def __init__(self, backbone: str = "inception", dims: int = 2048, device: str | torch.device = "cpu"):
        if backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {backbone!r}")
        if dims not in DIMS:
            raise ValueError(f"dims must be one of {DIMS}, got {dims}")
        self.backbone, self.dims, self.device = backbone, dims, torch.device(device)
        self.weights = (inception_weights.find_weights() if backbone == "inception"
                        else inception_weights.random_weights())
        self.model = build(self.weights.state_dict, dims).to(self.device, memory_format=torch.channels_last)

    @property
    def calibrated(self) -> bool:
        return self.weights.calibrated

    def __call__(self, images: Tensor) -> np.ndarray:
        x = images.to(self.device, torch.float32).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast(self.device.type, enabled=False), _no_tf32():
            return self.model(x).double().cpu().numpy()  # (B, dims)


@contextlib.contextmanager
def _no_tf32():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@dataclass
class RealSet:
    """What a real image set contributes to every score: FID's statistics and up to MAX_FEATURES features."""

    stats: FIDStats
    features: np.ndarray  # (min(N, MAX_FEATURES), dims) float32

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, mu=self.stats.mu, sigma=self.stats.sigma, n=np.int64(self.stats.n), features=self.features)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> RealSet:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            return cls(FIDStats(arrays["mu"], arrays["sigma"], int(arrays["n"])), arrays["features"])


def cache_name(fingerprint: str, resolution: tuple[int, int], dims: int, image_format: str, weights_sha256: str) -> str:
    """The cache file of a real set: every part of the key in the name, the fingerprint hashed."""
    height, width = resolution
    digest = hashlib.sha256(fingerprint.encode()).hexdigest()[:16]
    return f"real-v{_CACHE_VERSION}-{weights_sha256[:12]}-{dims}d-{image_format}-{height}x{width}-{digest}.npz"


class Evaluator:
    """Scores of a generator against a real image set, with the real side cached.

    The cache folder (default: $FPA_CACHE_DIR/fid) is looked in first, then ``cache_uri`` (a folder or an
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
        self.cache_dir = str(cache_dir) if cache_dir is not None else str(cache.cache_dir("fid"))
        self.cache_uri = cache_uri
        self.extractor = InceptionFeatures(backbone, dims, device)
        self._real: dict[str, RealSet] = {}  # real sets already read or computed by this evaluator

    @property
    def calibrated(self) -> bool:
        """True only with the FID Inception weights: then the numbers compare with published FIDs."""
        return self.extractor.calibrated

    @property
    def weights_sha256(self) -> str:
        return self.extractor.weights.sha256

    @property
    def label(self) -> str:
        return "FID" if self.calibrated else f"FID (uncalibrated: {self.backbone} backbone)"

    def protocol(self, num_images: int) -> dict[str, Any]:
        """What a score depends on besides the generator: scores compare only under equal protocols."""
        return {"backbone": self.backbone, "calibrated": self.calibrated, "weights_sha256": self.weights_sha256,
                "dims": self.dims, "image_format": self.image_format, "num_images": num_images}

    def features(self, images: np.ndarray) -> np.ndarray:
        """(B, H, W, 3) uint8 -> (B, dims) float64, after the image file round trip."""
        return self.extractor(to_unit_float(round_trip(images, self.image_format)))

    def real_set(self, images: np.ndarray, fingerprint: str) -> RealSet:
        """The real images (N, H, W, 3) uint8, as statistics and features: from the caches, or computed and cached."""
        check_uint8_images(images)
        if len(images) < 2:
            raise ValueError(f"the real set has {len(images)} image; FID, KID and precision/recall need at least 2")
        name = cache_name(fingerprint, images.shape[1:3], self.dims, self.image_format, self.weights_sha256)
        if name in self._real:
            return self._real[name]
        caches = [storage.join(self.cache_dir, name)] + ([storage.join(self.cache_uri, name)] if self.cache_uri else [])
        with contextlib.nullcontext() if storage.is_s3(caches[0]) else cache.locked(caches[0]):
            real = self._real[name] = self._find_or_compute(images, caches)
        return real

    def _find_or_compute(self, images: np.ndarray, caches: list[str]) -> RealSet:
        """The real set from the first cache that holds it (and copied to those that do not), else computed
        and written to every cache."""
        for i, uri in enumerate(caches):
            real = _read(uri)
            if real is not None:
                log.info("real features: cache hit %s", uri)
                for other in caches[:i] + [c for c in caches[i + 1:] if not storage.exists(c)]:
                    _write(other, real)
                break
        else:
            log.info("computing the Inception features of %d real images (%s)", len(images), caches[0])
            keep = _subset(len(images))
            moments, kept = Moments(), []
            for start in range(0, len(images), self.batch_size):
                batch = self.features(images[start:start + self.batch_size])  # (b, dims)
                moments.add(batch)
                kept.append(batch[keep[(keep >= start) & (keep < start + len(batch))] - start])
            real = RealSet(moments.stats(), np.concatenate(kept).astype(np.float32))
            for uri in caches:
                _write(uri, real)
        return real

    def generated_features(self, sample: Callable[[int], Tensor], n: int, resolution: tuple[int, int] | None = None,
                           on_batch: Callable[[int], None] | None = None) -> tuple[FIDStats, np.ndarray]:
        """The statistics of n images from ``sample(count) -> (count, C, H, W) in [-1, 1]``, drawn in batches of
        at most ``batch_size``, and the features of up to MAX_FEATURES of them (the first ones: samples are
        independent). ``on_batch(done)`` is called after each batch."""
        if n < 2:
            raise ValueError(f"scores need at least 2 generated images, got {n}")
        moments, kept = Moments(), []
        for start in range(0, n, self.batch_size):
            count = min(self.batch_size, n - start)
            images = sample(count)  # (count, C, H, W)
            _check_sampled(images, count, resolution)
            features = self.features(to_uint8(images))
            moments.add(features)
            if start < MAX_FEATURES:
                kept.append(features[:MAX_FEATURES - start].astype(np.float32))
            if on_batch is not None:
                on_batch(start + count)
        return moments.stats(), np.concatenate(kept)

    def scores(self, sample: Callable[[int], Tensor], n: int, real_images: np.ndarray, fingerprint: str,
               on_batch: Callable[[int], None] | None = None) -> Scores:
        """FID, KID and precision/recall of n sampled images against the real images (N, H, W, 3) uint8."""
        real = self.real_set(real_images, fingerprint)
        stats, features = self.generated_features(sample, n, tuple(real_images.shape[1:3]), on_batch)
        fid = frechet_distance(stats.mu, stats.sigma, real.stats.mu, real.stats.sigma)
        kid, kid_std = kernel_inception_distance(features, real.features, seed=_SUBSET_SEED)
        precision, recall = precision_recall(features, real.features)
        return Scores(fid, kid, kid_std, precision, recall, n)


def _subset(n: int) -> np.ndarray:
    """The real images whose features are kept: all of up to MAX_FEATURES, else a fixed random choice, sorted."""
    if n <= MAX_FEATURES:
        return np.arange(n)
    return np.sort(np.random.default_rng(_SUBSET_SEED).choice(n, MAX_FEATURES, replace=False))


def _check_sampled(images: Tensor, count: int, resolution: tuple[int, int] | None) -> None:
    height, width = resolution or images.shape[-2:]
    if images.dim() != 4 or images.shape[0] != count or images.shape[1] not in (1, 3) \
            or tuple(images.shape[-2:]) != (height, width):
        raise ValueError(f"sample({count}) returned images of shape {tuple(images.shape)}, "
                         f"expected ({count}, 1 or 3, {height}, {width})")


def _read(uri: str) -> RealSet | None:
    try:
        return RealSet.from_bytes(storage.read_bytes(uri))
    except FileNotFoundError:
        return None


def _write(uri: str, real: RealSet) -> None:
    storage.write_bytes(uri, real.to_bytes())
    log.info("real features: cached at %s", uri)
