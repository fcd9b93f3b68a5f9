"""Preparing a dataset of the paper from its official download: ``prepare(name, src)`` copies the images the
dataset keeps (``fpa_core.data.catalog``) from a zip (checked entry by entry: ``fpa_core.data.archives``), a
folder or LSUN's LMDB, into ``<data_root>/<name>/``, a folder that appears only once complete, then builds the
cache that training reads (``fpa_core.data.load_images``). The command line is ``fpa_core.dataset_tool``.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from PIL import Image

from fpa_core.data import (EXTENSION_OF_FORMAT, PIL_FORMATS, READ_ERRORS, ImageSet, default_data_root, image_files,
                           is_image, load_images)
from fpa_core.data.archives import safe_extract
from fpa_core.data.catalog import DATASETS

logger = logging.getLogger(__name__)


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
        for rel, path in image_files(src):
            parts = tuple(rel.split("/"))
            if keep(parts):
                target = dest.joinpath(*parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
                written += 1
        return written, 0
    if not zipfile.is_zipfile(src):
        raise ValueError(f"{src} is neither a folder nor a zip archive")
    return len(safe_extract(src, dest, keep=lambda parts: is_image(parts) and keep(parts))), 0


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
        with Image.open(io.BytesIO(data), formats=PIL_FORMATS) as image:
            return EXTENSION_OF_FORMAT.get(image.format)
    except READ_ERRORS:
        return None
