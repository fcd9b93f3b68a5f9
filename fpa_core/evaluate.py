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

from fpa_core import checkpoint, storage
from fpa_core.data import DatasetNotFoundError
from fpa_core.images import IMAGE_FORMATS
from fpa_core.metrics import BACKBONES, describe
from fpa_core.metrics.inception import DIMS
from fpa_core.metrics.protocol import PAPER_NUM_IMAGES, default_out, evaluate_checkpoint
from fpa_core.metrics.weights import FIDWeightsInvalid, FIDWeightsUnavailable
from fpa_core.progress import Progress


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
