"""Score a checkpoint's EMA generator as the paper's tables did: 50 K images against every real image.

    python -m fpa_core.evaluate --checkpoint runs/metfaces/checkpoints/best.pt            # Table 1: JPEG
    python -m fpa_core.evaluate --model models:/fpa-metfaces@champion --format png        # Table 4: PNG
    python -m fpa_core.evaluate --checkpoint runs/digits/checkpoints/best.pt --as-trained  # the run's own settings

FID, KID (with its std over subsets) and precision/recall of --num-images generated images (default
50,000) against all real images of the checkpoint's dataset at its resolution, from the calibrated
2048-d Inception features, through JPEG (default) or PNG files. Sampling runs in float32 without autocast,
whatever precision the run trained in. ``--as-trained`` takes the run's own evaluation settings (image
count, feature size, backbone, format and latent seed) and reproduces the scores it logged.

Writes eval.json (the scores, the protocol, the weights' hash, the checkpoint) beside the checkpoint as
``<name>.eval.json``, or to --out (a .json file or a folder); a models:/ URI defaults to ./eval.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any, Callable

import torch

from fpa_core import checkpoint, storage
from fpa_core.data import DatasetNotFoundError, load_images
from fpa_core.images import IMAGE_FORMATS
from fpa_core.inception import DIMS
from fpa_core.inception_weights import FIDWeightsInvalid, FIDWeightsUnavailable
from fpa_core.evaluations import BACKBONES, describe
from fpa_core.metrics import Evaluator, latent_sampler
from fpa_core.progress import Progress

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fpa_core.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a training checkpoint or exported generator, local or s3://")
    source.add_argument("--model", help="a registered model, e.g. models:/fpa-metfaces@champion")
    parser.add_argument("--tracking-uri", help="the MLflow registry of --model (default: MLFLOW_TRACKING_URI)")
    parser.add_argument("--num-images", type=int, help=f"generated images (default {PAPER_NUM_IMAGES:,})")
    parser.add_argument("--format", dest="image_format", choices=IMAGE_FORMATS,
                        help="the image files the features are computed from: jpeg (Table 1, default) or png (Table 4)")
    parser.add_argument("--dims", type=int, choices=DIMS, help="Inception feature size (default 2048)")
    parser.add_argument("--backbone", choices=BACKBONES, help="inception (default) or the uncalibrated inception-random")
    parser.add_argument("--seed", type=int, help="seed of the latents (default: the run's)")
    parser.add_argument("--as-trained", action="store_true",
                        help="the run's own evaluation settings: reproduces the scores it logged at this step")
    parser.add_argument("--dataset", help="where the run's dataset is, if not where it was (a name, folder or zip)")
    parser.add_argument("--batch-size", type=int, default=50, help="images per Inception batch (default 50)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when there is one), cpu, cuda, cuda:1, ...")
    parser.add_argument("--out", help="eval.json's location: a .json file or a folder (default: beside the checkpoint)")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    args = parser.parse_args(argv)
    if args.num_images is not None and args.num_images < 2:
        parser.error(f"--num-images must be at least 2 (a covariance needs two images), got {args.num_images}")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}")
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    uri = args.checkpoint or args.model
    try:
        state = checkpoint.load(checkpoint.resolve(uri, args.tracking_uri))
        trained = state["config"]["fid"]
        settings = {"num_images": PAPER_NUM_IMAGES, "dims": 2048, "backbone": "inception", "image_format": "jpeg"}
        if args.as_trained:
            settings = {k: trained[k] for k in settings}
        for key in settings:
            if getattr(args, key) is not None:
                settings[key] = getattr(args, key)
        progress = Progress(settings["num_images"], log_interval_s=30.0)
        record = evaluate_checkpoint(state, **settings, batch_size=args.batch_size, seed=args.seed,
                                     dataset=args.dataset, device=args.device, source=uri,
                                     on_batch=lambda done: progress.update(done, {"images": str(done)}))
        progress.close()
    except (FileNotFoundError, DatasetNotFoundError, FIDWeightsUnavailable, FIDWeightsInvalid, ValueError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    out = args.out or default_out(uri)
    if not out.endswith(".json"):
        out = storage.join(out, "eval.json")
    storage.write_bytes(out, json.dumps(record, indent=2).encode())
    p = record["protocol"]
    label = "FID" if p["calibrated"] else f"FID (uncalibrated: {p['backbone']})"
    print(f"{uri} at step {record['step']}: {describe(record['scores'], label)}")
    print(f"{p['num_images']:,} images vs {p['num_real']:,} real, {p['dims']}-d features, {p['image_format']}, "
          f"{record['wall_time_s']:.0f} s ({record['images_per_s']:.1f} images/s); wrote {out}")
    print(json.dumps({"out": out, "step": record["step"], **record["scores"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
