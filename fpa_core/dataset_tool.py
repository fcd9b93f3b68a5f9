"""Datasets, prepared apart from training: an official download into ``<data_root>/<name>/``, then its cache.

    python -m fpa_core.dataset_tool prepare afhq-cat --src ~/Downloads/afhq.zip
    python -m fpa_core.dataset_tool info digits --resolution 32

``prepare`` copies the images a dataset keeps (``fpa_core.datasets``) from a zip (checked entry by entry:
``fpa_core.archives``), a folder or LSUN's LMDB, into a folder that appears only once complete, then
builds the cache that training reads (``fpa_core.data.load_images``). ``info`` loads any dataset, a folder
or a zip and describes it. ``python -m fpa_core.data`` is the old name of this command.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import logging
import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

from PIL import Image

from fpa_core.archives import safe_extract
from fpa_core.data import (EXTENSION_OF_FORMAT, PIL_FORMATS, READ_ERRORS, DatasetNotFoundError, ImageSet,
                           default_data_root, image_files, is_image, load_images)
from fpa_core.datasets import DATASETS

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
    parser = argparse.ArgumentParser(prog="python -m fpa_core.dataset_tool", description=__doc__,
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
