"""Datasets, prepared apart from training: an official download into ``<data_root>/<name>/``, then its cache.

    python -m fpa_core.dataset_tool prepare afhq-cat --src ~/Downloads/afhq.zip     (also: fpa-dataset prepare ...)
    python -m fpa_core.dataset_tool info digits --resolution 32

``prepare`` is ``fpa_core.data.prepare.prepare``: the images a dataset keeps, copied into a folder that appears
only once complete, then the cache that training reads. ``info`` loads any dataset, a folder or a zip and
describes it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from fpa_core.data import DatasetNotFoundError, ImageSet, load_images
from fpa_core.data.catalog import DATASETS
from fpa_core.data.prepare import prepare


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
    info.add_argument("name", metavar="NAME_OR_PATH", help=f"digits, mnist, {', '.join(DATASETS)}, a folder or a .zip")
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
