"""The paper's datasets (Appendix B.1): where to get each one and which of its files ``prepare`` keeps.

``fpa_core.data.load_images`` finds a named dataset under ``<data_root>/<name>/`` (or ``<name>.zip``);
``python -m fpa_core.dataset_tool prepare NAME --src DOWNLOAD`` puts it there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


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
