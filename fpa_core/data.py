"""Datasets for GAN training: uint8 image arrays, preprocessed once and cached.

    load_images("digits", 32)             scikit-learn's 1,797 handwritten digits (ships with it, no download)
    load_images("afhq-cat", 64)           a dataset of the paper: <data_root>/afhq-cat/ or <data_root>/afhq-cat.zip
    load_images("path/to/images", 64)     any folder or .zip of png, jpg, jpeg or webp files, searched recursively

Every image goes through what the reference code's torchvision ``Resize(res)`` and ``CenterCrop(res)``
did: RGB, the shorter side resized to ``res`` (bilinear, antialiased as Pillow does when reducing),
the centre ``res`` x ``res`` cropped. The result, an (N, res, res, 3) uint8 array, is cached as a
``.npy`` file named after the source's fingerprint and the resolution, so that later runs start at
once. Unreadable files are skipped and counted.

The command line turns an official download into ``<data_root>/<name>/`` and reports on a dataset:

    python -m fpa_core.data prepare afhq-cat --src ~/Downloads/afhq.zip
    python -m fpa_core.data info digits --resolution 32
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import logging
import os
import re
import shutil
import stat
import sys
import tempfile
import threading
import zipfile
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from fpa_core.cache import cache_dir

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
# The formats those extensions hold. Naming them keeps Pillow's other plugins (EPS, which runs
# Ghostscript, among them) away from files that merely carry an image extension.
_PIL_FORMATS = ("PNG", "JPEG", "WEBP")
_EXTENSION_OF_FORMAT = {"PNG": ".png", "JPEG": ".jpg", "MPO": ".jpg", "WEBP": ".webp"}  # MPO: a JPEG variant
# What reading or decoding one damaged file raises (RuntimeError: an encrypted or an unsupported zip member).
_READ_ERRORS = (OSError, SyntaxError, ValueError, EOFError, RuntimeError, zipfile.BadZipFile, zlib.error,
                Image.DecompressionBombError)
_CACHE_VERSION = 1  # part of every cache file's name: bump it when the preprocessing changes
_CHUNK = 256  # files handed to the decoding threads at once, which bounds what is held in memory
_WORKERS = min(8, os.cpu_count() or 1)  # Pillow releases the GIL while it decodes and resizes


class DatasetNotFoundError(FileNotFoundError):
    """The dataset asked for is not there; the message says where it looked and how to get it."""


class UnsafeArchiveError(ValueError):
    """A zip archive has an entry that would be written outside the folder it is extracted to."""


@dataclass(eq=False)
class ImageSet:
    """A dataset, preprocessed: ``images`` is a read-only memory map of the cache file."""

    name: str  # the dataset's name, or the folder's or archive's name
    images: np.ndarray  # (N, H, W, 3) uint8
    fingerprint: str  # hex sha256 of the source (file names, sizes and dates or CRCs; the digits' pixels)
    source: str  # what was read, e.g. "folder /data/afhq-cat"
    skipped: int  # unreadable files skipped while building it
    cache_path: Path  # the .npy file behind ``images``


@dataclass(frozen=True)
class DatasetSpec:
    """One of the paper's datasets (Appendix B.1): where to get it and what ``prepare`` keeps of it."""

    title: str
    url: str
    download: str  # what to fetch, and what to pass to ``prepare --src``
    src_example: str
    keep: Callable[[tuple[str, ...]], bool] = lambda parts: True  # on the path parts of each image file


def _afhq_train(kind: str) -> Callable[[tuple[str, ...]], bool]:
    """Keep train/<kind>/ of afhq.zip (its val/ split and the other animals are left out)."""
    return lambda parts: any(parts[i:i + 2] == ("train", kind) for i in range(len(parts) - 1))


_AFHQ_DOWNLOAD = "afhq.zip (`bash download.sh afhq-dataset` in the repository), or its extracted folder"
DATASETS = {
    "celeba": DatasetSpec(
        "CelebA, aligned and cropped (202,599 images)", "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html",
        "img_align_celeba.zip ('Align&Cropped Images'), or its extracted img_align_celeba folder",
        "img_align_celeba.zip"),
    "lsun-church": DatasetSpec(
        "LSUN church_outdoor, train split (126,227 images)", "https://www.yf.io/p/lsun",
        "church_outdoor_train_lmdb.zip (http://dl.yf.io/lsun/scenes/church_outdoor_train_lmdb.zip, or "
        "`python download.py -c church_outdoor` of https://github.com/fyu/lsun), unzipped: pass the "
        "church_outdoor_train_lmdb folder; reading it needs `pip install lmdb`",
        "church_outdoor_train_lmdb"),
    "metfaces": DatasetSpec(
        "MetFaces (1,336 images)", "https://github.com/NVlabs/metfaces-dataset",
        "the images/ folder (aligned 1024x1024 PNGs), or a zip of it; unprocessed/ is left out",
        "metfaces-dataset/images", keep=lambda parts: "unprocessed" not in parts),
    "afhq-cat": DatasetSpec("AFHQ cat, train split (about 5,000 images)", "https://github.com/clovaai/stargan-v2",
                            f"{_AFHQ_DOWNLOAD}; only train/cat is used", "afhq.zip", keep=_afhq_train("cat")),
    "afhq-dog": DatasetSpec("AFHQ dog, train split (about 5,000 images)", "https://github.com/clovaai/stargan-v2",
                            f"{_AFHQ_DOWNLOAD}; only train/dog is used", "afhq.zip", keep=_afhq_train("dog")),
    "afhq-wild": DatasetSpec("AFHQ wild, train split (about 5,000 images)", "https://github.com/clovaai/stargan-v2",
                             f"{_AFHQ_DOWNLOAD}; only train/wild is used", "afhq.zip", keep=_afhq_train("wild")),
}


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


def default_data_root() -> Path:
    return Path(os.environ.get("FPA_DATA_ROOT") or "data")


def default_cache_dir() -> Path:
    return cache_dir("datasets")


def _resolve(name_or_path: str, data_root: Path) -> _Source:
    if name_or_path == "digits":
        return _digits_source()
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
        f"unknown dataset {name_or_path!r}: not one of digits, {', '.join(DATASETS)}, and no folder or zip "
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
            f"Then run: python -m fpa_core.data prepare {name} --src PATH/TO/{spec.src_example} --data-root {root}")


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


def _folder_source(root: Path, label: str) -> _Source:
    files = _image_files(root)
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
        _check_archive(archive, path)
        members = sorted((info for info in archive.infolist() if _is_image(_member_parts(info.filename))),
                         key=lambda info: info.filename)
    fingerprint = _fingerprint("zip", [(info.filename, info.CRC, info.file_size) for info in members])
    location = f"zip {path.absolute()}"
    names = [info.filename for info in members]

    def build(resolution: int) -> np.ndarray:
        lock = threading.Lock()  # one reader at a time: ZipFile does not promise more; decoding runs in parallel
        with zipfile.ZipFile(path) as archive:

            def read(name: str) -> bytes:
                with lock:
                    return archive.read(name)

            return _decode_all(names, read, resolution, location)

    return _Source(label, location, fingerprint, len(names), build)


def _fingerprint(kind: str, entries: list[tuple]) -> str:
    return hashlib.sha256(json.dumps([kind, entries]).encode()).hexdigest()


def _image_files(root: Path) -> list[tuple[str, Path]]:
    """(relative posix path, path) of every image file under ``root``, sorted; hidden ones left out."""
    files = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [d for d in subfolders if not _hidden(d)]
        for name in names:
            path = Path(folder, name)
            rel = path.relative_to(root).as_posix()
            if _is_image(tuple(rel.split("/"))):
                files.append((rel, path))
    return sorted(files)


def _is_image(parts: tuple[str, ...]) -> bool:
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
        except _READ_ERRORS as e:
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
    with Image.open(io.BytesIO(data), formats=_PIL_FORMATS) as image:
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


# -- archives -------------------------------------------------------------------------------------------------


def _check_archive(archive: zipfile.ZipFile, where: str | os.PathLike) -> None:
    """Raise UnsafeArchiveError, naming the entry, if any entry could be written outside its folder.

    ``load_images`` reads images straight from a zip, where such an entry could do no harm, and
    still rejects the whole archive rather than skip the entry: ``..`` and absolute names are what
    path-traversal archives are made of, and the same file given to ``prepare``, ``unzip`` or any other
    extractor could write outside its target. Skipping would quietly load a different dataset than the
    archive holds and hide the problem; one rule for reading and for extracting keeps the two in agreement.
    """
    for info in archive.infolist():
        problem = _unsafe(info)
        if problem:
            raise UnsafeArchiveError(f"unsafe zip archive {where}: its entry {info.filename!r} {problem}, so it "
                                     "could be written outside the folder it is extracted to; the archive is rejected")


def _unsafe(info: zipfile.ZipInfo) -> str | None:
    name = info.filename
    if stat.S_ISLNK(info.external_attr >> 16):
        return "is a symbolic link"
    if name.startswith(("/", "\\")):
        return "is an absolute path"
    if re.match(r"[A-Za-z]:", name):
        return "starts with a drive letter"
    if ".." in _member_parts(name):
        return "has a '..' component"
    return None


def _member_parts(name: str) -> tuple[str, ...]:
    """A zip entry's path components; backslashes count as separators, as they do on Windows."""
    return tuple(part for part in re.split(r"[/\\]", name) if part not in ("", "."))


def safe_extract(zip_path: str | os.PathLike, dest: str | os.PathLike, *,
                 keep: Callable[[tuple[str, ...]], bool] | None = None) -> list[Path]:
    """Extract a zip archive into ``dest`` and return the files written.

    Every entry is checked before anything is written: one that would land outside ``dest`` (a ``..``
    component, an absolute path, a drive letter, a symbolic link, or a path through a symbolic link
    already in ``dest``) raises UnsafeArchiveError naming it. ``keep``, given an entry's path
    components, chooses the entries to extract (default: all).
    """
    dest = Path(dest)
    with zipfile.ZipFile(zip_path) as archive:
        _check_archive(archive, zip_path)
        root = dest.resolve()
        plan = []
        for info in archive.infolist():
            parts = _member_parts(info.filename)
            if parts and (keep is None or keep(parts)):
                plan.append((info, dest.joinpath(*parts)))
        for info, target in plan:
            if not target.resolve().is_relative_to(root):
                raise UnsafeArchiveError(f"unsafe zip archive {zip_path}: its entry {info.filename!r} would be "
                                         f"written to {target.resolve()}, outside {root}; the archive is rejected")
        written = []
        for info, target in plan:
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
            written.append(target)
    return written


# -- prepare: from an official download to <data_root>/<name>/ ------------------------------------------------


def prepare(name: str, src: str | os.PathLike, *, data_root: str | os.PathLike | None = None, resolution: int = 64,
            cache_dir: str | os.PathLike | None = None) -> ImageSet:
    """Put the images of dataset ``name`` from its official download ``src`` into ``<data_root>/<name>/``.

    Then build its cache at ``resolution`` and return it; ``skipped`` also counts LMDB records that
    were not images. The folder appears only once complete (it is filled under a temporary name).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}: prepare builds one of {', '.join(DATASETS)}")
    src = Path(src).expanduser()
    if not src.exists():
        raise FileNotFoundError(f"no such file or folder: {src}")
    root = Path(data_root) if data_root is not None else default_data_root()
    dest = root / name
    if dest.exists():
        raise FileExistsError(f"{dest.absolute()} already exists: remove it to prepare {name} again")
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}-", suffix=".partial"))
    try:
        written, dropped = _export(name, src, staging)
        if written == 0:
            raise ValueError(f"no {name} images in {src}: expected {DATASETS[name].download}")
        os.replace(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("%s: %d files from %s in %s", name, written, src, dest)
    images = load_images(name, resolution, data_root=root, cache_dir=cache_dir)
    return dataclasses.replace(images, skipped=images.skipped + dropped)


def _export(name: str, src: Path, dest: Path) -> tuple[int, int]:
    """Write the dataset's image files from ``src`` into ``dest``: (files written, records dropped)."""
    if name == "lsun-church":
        return _export_lmdb(src, dest)
    keep = DATASETS[name].keep
    if src.is_dir():
        written = 0
        for rel, path in _image_files(src):
            parts = tuple(rel.split("/"))
            if keep(parts):
                target = dest.joinpath(*parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
                written += 1
        return written, 0
    if not zipfile.is_zipfile(src):
        raise ValueError(f"{src} is neither a folder nor a zip archive")
    return len(safe_extract(src, dest, keep=lambda parts: _is_image(parts) and keep(parts))), 0


def _export_lmdb(src: Path, dest: Path) -> tuple[int, int]:
    """LSUN's LMDB holds one encoded image per record; each becomes a file, its bytes unchanged."""
    if not (src / "data.mdb").is_file():
        raise ValueError(f"{src} is not an LMDB folder (it has no data.mdb): unzip church_outdoor_train_lmdb.zip "
                         "and pass the church_outdoor_train_lmdb folder")
    try:
        import lmdb
    except ImportError as e:
        raise ImportError("reading LSUN's LMDB needs the lmdb package: pip install lmdb") from e
    written, dropped = 0, []
    env = lmdb.open(str(src), readonly=True, lock=False, readahead=False)
    try:
        with env.begin(write=False) as txn:
            for key, value in txn.cursor():
                extension = _image_extension(value)
                if extension is None:
                    dropped.append(bytes(key).decode(errors="replace"))
                    continue
                (dest / f"{written:07d}{extension}").write_bytes(value)
                written += 1
    finally:
        env.close()
    if dropped:
        logger.warning("%s: skipped %d records that are not images, e.g. %s", src, len(dropped), ", ".join(dropped[:5]))
    return written, len(dropped)


def _image_extension(data: bytes) -> str | None:
    """The file extension for encoded image bytes (from their header), or None if they are no image."""
    try:
        with Image.open(io.BytesIO(data), formats=_PIL_FORMATS) as image:
            return _EXTENSION_OF_FORMAT.get(image.format)
    except _READ_ERRORS:
        return None


# -- command line ---------------------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _describe(images: ImageSet, resolution: int) -> str:
    return "\n".join([
        f"source       {images.source}",
        f"images       {len(images.images)} at {resolution}x{resolution}",
        f"skipped      {images.skipped}",
        f"fingerprint  {images.fingerprint}",
        f"cache        {images.cache_path}",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fpa_core.data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="{prepare,info}")
    names = "; ".join(f"{name}: {spec.download}, from {spec.url}" for name, spec in DATASETS.items())
    prep = commands.add_parser("prepare", help="put an official download into DATA_ROOT/NAME/ and cache it",
                               description=f"Put the images of an official download into DATA_ROOT/NAME/, then "
                                           f"build the cache. --src is, for {names}.")
    prep.add_argument("name", metavar="NAME", choices=list(DATASETS), help=", ".join(DATASETS))
    prep.add_argument("--src", type=Path, required=True, metavar="PATH", help="the downloaded archive or folder")
    info = commands.add_parser("info", help="load a dataset (building its cache) and describe it")
    info.add_argument("name", metavar="NAME_OR_PATH", help=f"digits, {', '.join(DATASETS)}, a folder or a .zip")
    for command in (prep, info):
        command.add_argument("--data-root", type=Path, metavar="DIR",
                             help="where named datasets live (default: $FPA_DATA_ROOT, else ./data)")
        command.add_argument("--resolution", type=_positive_int, default=64, help="image size (default: 64)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    error_prefix = f"{parser.prog} {args.command}: error:"
    if args.command == "prepare" and not args.src.exists():
        prep.error(f"--src {args.src}: no such file or folder")
    try:
        if args.command == "prepare":
            images = prepare(args.name, args.src, data_root=args.data_root, resolution=args.resolution)
            print(_describe(images, args.resolution))
            print(f"prepared {args.name}: {len(images.images)} images ({images.skipped} skipped) in "
                  f"{images.source}, cache {images.cache_path}")
        else:
            images = load_images(args.name, args.resolution, data_root=args.data_root)
            print(_describe(images, args.resolution))
            print(f"{images.name}: {len(images.images)} images at {args.resolution}x{args.resolution}, "
                  f"{images.skipped} skipped, fingerprint {images.fingerprint[:16]}, cache {images.cache_path}")
    except DatasetNotFoundError as e:
        parser.exit(2, f"{error_prefix} {e}\n")
    except (ValueError, OSError, ImportError) as e:
        parser.exit(1, f"{error_prefix} {e}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
