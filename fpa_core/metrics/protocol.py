"""The paper's evaluation protocol (Table 1, Table 4): a checkpoint's EMA generator, scored on 50 K images in
float32 against every real image of its dataset, from the calibrated 2048-d Inception features, through JPEG
(the default) or PNG files. ``evaluate_checkpoint`` returns the scores and how they were measured (what eval.json
holds); the command line is ``fpa_core.evaluate``.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import torch

from fpa_core import checkpoint, storage
from fpa_core.data import load_images
from fpa_core.metrics.evaluator import Evaluator, latent_sampler

log = logging.getLogger(__name__)

PAPER_NUM_IMAGES = 50_000


class DatasetMismatch(ValueError):
    """The dataset given is not the one the checkpoint was trained on."""


def evaluate_checkpoint(state: dict[str, Any], *, num_images: int = PAPER_NUM_IMAGES, dims: int = 2048,
                        backbone: str = "inception", image_format: str = "jpeg", batch_size: int = 50,
                        seed: int | None = None, dataset: str | None = None, device: str = "auto",
                        source: str = "the checkpoint", on_batch: Callable[[int], None] | None = None) -> dict[str, Any]:
    """The scores of a loaded checkpoint's EMA generator and how they were measured (what eval.json holds).

    ``seed`` seeds the latents as the trainer's evaluation at the checkpoint's step did (default: the run's
    seed), so that the run's own settings give its logged scores back. ``dataset`` (default: the run's) may
    name another location of the same images; images that differ raise DatasetMismatch."""
    if num_images < 2:
        raise ValueError(f"--num-images must be at least 2 (a covariance needs two images), got {num_images}")
    config = state["config"]
    device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                          "cpu" if device == "auto" else device)
    data = load_images(dataset or config["data"]["dataset"], config["data"]["resolution"])
    trained_on = state["dataset"]["fingerprint"]
    if data.fingerprint != trained_on:
        raise DatasetMismatch(f"{data.source} is not the dataset {source} was trained on (fingerprint "
                              f"{data.fingerprint[:12]}, the checkpoint's {trained_on[:12]}); pass --dataset "
                              f"with the images of {state['dataset']['name']!r}")
    generator = checkpoint.generator_from_state(state, source=source).to(device)
    evaluator = Evaluator(backbone=backbone, dims=dims, image_format=image_format, batch_size=batch_size,
                          device=device)
    seed = config["seed"] if seed is None else seed
    start = time.perf_counter()
    sample = latent_sampler(generator, seed, state["step"], device, checkpoint.value_range(state))
    scores = evaluator.scores(sample, num_images, data.images, data.fingerprint, on_batch)
    wall = time.perf_counter() - start
    return {"checkpoint": source, "step": state["step"], "scores": scores.to_dict(),
            "protocol": {**evaluator.protocol(num_images), "precision": "fp32", "latent_seed": seed,
                         "dataset": state["dataset"]["name"], "dataset_fingerprint": data.fingerprint,
                         "resolution": config["data"]["resolution"], "num_real": len(data.images)},
            "wall_time_s": round(wall, 2), "images_per_s": round(num_images / max(wall, 1e-9), 2)}


def default_out(uri: str) -> str:
    """Beside the checkpoint as <name>.eval.json; ./eval.json for a registered model."""
    if uri.startswith("models:/"):
        return "eval.json"
    folder, _, name = uri.rpartition("/")
    stem = name.rsplit(".", 1)[0]
    return storage.join(folder or ".", f"{stem}.eval.json")
