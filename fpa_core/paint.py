"""Draw a trained generator's samples and its painting process (Figure 5) from a checkpoint.

    python -m fpa_core.paint --checkpoint runs/digits/checkpoints/best.pt --out paintings/
    python -m fpa_core.paint --checkpoint s3://bucket/runs/x/checkpoints/best.pt --out s3://bucket/paintings
    python -m fpa_core.paint --model models:/fpa-metfaces@champion --out paintings/   # the promoted champion

Writes grid.png (samples), painting.png (the T rank-1 updates above the T canvases for each latent)
and painting.gif to --out, local or s3://.
"""

from __future__ import annotations

import argparse
import math
import sys
from importlib.metadata import entry_points

import torch

from fpa_core import checkpoint, pictures, storage
from fpa_core.config import ConfigError, from_dict
from fpa_core.model import FPAGenerator, ModelConfig
from fpa_core.unet import RefinedGenerator, UNet, UNetConfig


def load_generator(uri: str, ema: bool = True, device: str | torch.device = "cpu",
                   tracking_uri: str | None = None) -> torch.nn.Module:
    """The generator of a checkpoint (its EMA copy by default), in eval mode: an FPAGenerator, or a
    RefinedGenerator (FPA + U-Net) from a U-Net stage.

    ``uri``: a training checkpoint or an exported generator, local or ``s3://``; or a registered model,
    ``models:/fpa-metfaces@champion`` or ``models:/fpa-metfaces/3``, looked up in the MLflow registry
    at ``tracking_uri`` (default: MLFLOW_TRACKING_URI, else ./mlflow.db) when the sweep package is installed.
    """
    if uri.startswith("models:/"):
        uri = _registered_model(uri, tracking_uri)
    state = checkpoint.load(uri, map_location=device)
    key = "generator_ema" if ema else "generator"
    if key not in state:
        raise ValueError(f"{uri} holds only the EMA generator (an exported model); drop --raw")
    config = state["config"]
    model = FPAGenerator(from_dict(ModelConfig, config["model"], f"the model config in {uri}"))
    if config.get("stage", "fpa") == "unet":
        model = RefinedGenerator(model, UNet(from_dict(UNetConfig, config["unet"], f"the unet config in {uri}")))
    model.load_state_dict(state[key])
    return model.to(device).eval()


def _registered_model(uri: str, tracking_uri: str | None) -> str:
    """The local file of a registered model, through the resolver the sweep package registers under the
    entry point group ``fpa_core.model_registries`` (fpa_core itself never imports MLflow)."""
    resolvers = {ep.name: ep for ep in entry_points(group="fpa_core.model_registries")}
    if "models" not in resolvers:
        raise ValueError(f"{uri}: models:/ URIs need the sweep package (pip install 'fast-weight-painters[sweep]'); "
                         "or pass the checkpoint file itself")
    return resolvers["models"].load()(uri, tracking_uri)


def draw(generator: torch.nn.Module, out: str, *, samples: int = 64, paintings: int = 4, seed: int = 0,
         steps: int | None = None) -> dict[str, str]:
    """Write grid.png, painting.png and painting.gif for fixed latents; returns their locations."""
    device = next(generator.parameters()).device
    latents = torch.randn(max(samples, paintings), generator.config.d_latent,
                          generator=torch.Generator().manual_seed(seed)).to(device)
    with torch.no_grad():
        images = generator(latents[:samples], steps=steps)
        painting = generator.paint(latents[:paintings], steps=steps)
    written = {}
    for name, data in (("grid.png", pictures.png_bytes(pictures.grid(images, max(1, int(math.sqrt(samples)))))),
                       ("painting.png", pictures.png_bytes(pictures.painting_strip(painting))),
                       ("painting.gif", pictures.painting_gif(painting))):
        written[name] = storage.join(out, name)
        storage.write_bytes(written[name], data)
    return written


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
        generator = load_generator(args.checkpoint or args.model, ema=not args.raw, tracking_uri=args.tracking_uri)
        written = draw(generator, args.out, samples=args.samples, paintings=args.paintings, seed=args.seed,
                       steps=args.steps)
    except (FileNotFoundError, ValueError, ConfigError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    for uri in written.values():
        print(f"wrote {uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
