"""Draw a trained generator's samples and its painting process (Figure 5) from a checkpoint.

    python -m fpa_core.paint --checkpoint runs/digits/checkpoints/best.pt --out paintings/
    python -m fpa_core.paint --checkpoint s3://bucket/runs/x/checkpoints/best.pt --out s3://bucket/paintings
    python -m fpa_core.paint --model models:/fpa-metfaces@champion --out paintings/   # the promoted champion

Writes grid.png (samples), painting.png (the T rank-1 updates above the T canvases for each latent)
and painting.gif to --out, local or s3://.
"""

from __future__ import annotations

import argparse
import sys

from fpa_core import checkpoint, pictures
from fpa_core.config import ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fpa_core.paint", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a training checkpoint or exported generator, local or s3://")
    source.add_argument("--model", help="a registered model, e.g. models:/fpa-metfaces@champion")
    parser.add_argument("--tracking-uri", help="the MLflow registry of --model (default: MLFLOW_TRACKING_URI, "
                        "else sqlite:///./mlflow.db)")
    parser.add_argument("--out", required=True, help="where to write the pictures, local or s3://")
    parser.add_argument("--samples", type=int, default=64, help="images in the sample grid (default 64)")
    parser.add_argument("--paintings", type=int, default=4, help="latents in the painting strip (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the latents (default 0)")
    parser.add_argument("--steps", type=int, help="painting steps T; other than the trained T works for v1 only")
    parser.add_argument("--raw", action="store_true", help="use the raw generator instead of its EMA copy")
    args = parser.parse_args(argv)
    if args.samples < 1 or args.paintings < 1:
        parser.error("--samples and --paintings must be at least 1")
    try:
        uri = args.checkpoint or args.model
        state = checkpoint.load(checkpoint.resolve(uri, args.tracking_uri))
        generator = checkpoint.generator_from_state(state, ema=not args.raw, source=uri)
        written = pictures.draw(generator, args.out, samples=args.samples, paintings=args.paintings, seed=args.seed,
                       steps=args.steps, value_range=checkpoint.value_range(state))
    except (FileNotFoundError, ValueError, ConfigError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    for uri in written.values():
        print(f"wrote {uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
