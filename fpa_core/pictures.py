"""Pictures of a generator: sample grids and the painting process of Figure 5.

The painting strip shows, for each latent, the T rank-1 updates (top mini-row) above the T
cumulative canvases W_t (bottom mini-row), with the step number t above each column. As in the
paper's Figure 5, each picture X is rescaled to the norm of the final image, X * ||W_T|| / ||X||, then
passed through tanh. A U-Net's refinement (Figure 3) follows the last canvas, as it is, beside the FPA's
own output above it.

Images smaller than MIN_CELL pixels are enlarged by a whole factor with nearest-neighbour sampling, so
that a 16 x 16 digit is a 64 x 64 block of clean pixels. Pixel values are read in the data's range:
[-1, 1] (the default) or [0, 1] (data.range), and clipped to it.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from fpa_core import storage
from fpa_core.images import to_uint8
from fpa_core.model import Painting

GAP = 2  # pixels between pictures
MIN_CELL = 64  # smaller pictures are enlarged to at least this many pixels on their shorter side
LABEL = 12  # pixels of the row of step numbers above a strip
Range = tuple[float, float]


def scale_for(height: int, width: int) -> int:
    """The whole enlargement factor that brings the shorter side to MIN_CELL pixels or more."""
    return max(1, math.ceil(MIN_CELL / min(height, width)))


def grid(images: Tensor, nrow: int, value_range: Range = (-1.0, 1.0), scale: int | None = None,
         title: str | None = None) -> Image.Image:
    """Tile (B, C, H, W) images in ``value_range`` into rows of ``nrow`` on a white background, each enlarged
    ``scale`` times (default: scale_for(H, W)), under an optional one-line title."""
    low, high = value_range
    pictures = to_uint8((images.float() - low) / (high - low) * 2 - 1)  # (B, H, W, 3)
    factor = scale or scale_for(*pictures.shape[1:3])
    pictures = pictures.repeat(factor, axis=1).repeat(factor, axis=2)
    count, height, width, _ = pictures.shape
    ncol, nrows = min(nrow, count), -(-count // nrow)
    top = LABEL if title else 0
    canvas = np.full((top + nrows * (height + GAP) + GAP, ncol * (width + GAP) + GAP, 3), 255, np.uint8)
    for i, picture in enumerate(pictures):
        y, x = top + GAP + (i // nrow) * (height + GAP), GAP + (i % nrow) * (width + GAP)
        canvas[y:y + height, x:x + width] = picture
    image = Image.fromarray(canvas)
    if title:
        ImageDraw.Draw(image).text((GAP, 0), title, fill=(0, 0, 0), font=_font())
    return image


def normalised_steps(painting: Painting) -> tuple[Tensor, Tensor]:
    """Updates and canvases, each rescaled to the final image's norm, then tanh: (B, T, c, H, W) each."""
    final = painting.canvases[:, -1:]  # (B, 1, c, H, W)
    target = final.flatten(2).norm(dim=-1)[..., None, None, None]  # (B, 1, 1, 1, 1)

    def rescale(x: Tensor) -> Tensor:
        norm = x.flatten(2).norm(dim=-1)[..., None, None, None]  # (B, T, 1, 1, 1)
        return torch.tanh(x * target / norm.clamp_min(1e-12))

    return rescale(painting.updates), rescale(painting.canvases)


def _columns(painting: Painting) -> tuple[Tensor, Tensor, list[str]]:
    """The strip's two rows per latent and the label of each column: 1..T, and U-Net after a refinement."""
    updates, canvases = normalised_steps(painting)
    labels = [str(t + 1) for t in range(updates.shape[1])]
    if painting.refined is not None:  # one more column: the FPA's output above the U-Net's
        updates = torch.cat([updates, painting.image[:, None]], dim=1)
        canvases = torch.cat([canvases, painting.refined[:, None]], dim=1)
        labels.append("U-Net")
    return updates, canvases, labels


def painting_strip(painting: Painting, value_range: Range = (-1.0, 1.0), scale: int | None = None,
                   title: str | None = None) -> Image.Image:
    """For each latent, a row of the T updates above a row of the T canvases; step numbers on top."""
    updates, canvases, labels = _columns(painting)
    B, T = updates.shape[:2]
    rows = []
    for b in range(B):
        rows += [updates[b], canvases[b]]
    factor = scale or scale_for(*updates.shape[-2:])
    body = grid(torch.cat(rows), nrow=T, value_range=value_range, scale=factor)
    width = updates.shape[-1] * factor
    image = Image.new("RGB", (body.width, body.height + LABEL + (LABEL if title else 0)), (255, 255, 255))
    draw, font, top = ImageDraw.Draw(image), _font(), LABEL if title else 0
    if title:
        draw.text((GAP, 0), title, fill=(0, 0, 0), font=font)
    every = max(1, math.ceil(28 / (width + GAP)))  # leave room for the numbers of small pictures
    for t, label in enumerate(labels):
        if t % every == 0 or t == len(labels) - 1:
            draw.text((GAP + t * (width + GAP), top), label, fill=(90, 90, 90), font=font)
    image.paste(body, (0, top + LABEL))
    return image


def painting_gif(painting: Painting, value_range: Range = (-1.0, 1.0), scale: int | None = None,
                 duration_ms: int = 120) -> bytes:
    """An animated GIF: frame t shows each latent's update t beside its canvas W_t, captioned 'step t/T'."""
    updates, canvases, labels = _columns(painting)
    B, T = updates.shape[:2]
    frames = []
    for t in range(T):
        pairs = torch.stack([updates[:, t], canvases[:, t]], dim=1).flatten(0, 1)  # (2B, c, H, W)
        caption = f"step {labels[t]}/{T - (painting.refined is not None)}" if labels[t].isdigit() else "U-Net"
        frames.append(grid(pairs, nrow=2, value_range=value_range, scale=scale, title=caption))
    frames += [frames[-1]] * 8  # hold the finished picture
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=duration_ms, loop=0)
    return buffer.getvalue()


def render(generator: torch.nn.Module, latents: Tensor, samples: int, paintings: int,
           value_range: Range = (-1.0, 1.0), title: str | None = None, steps: int | None = None) -> dict[str, bytes]:
    """The pictures of a generator for fixed latents, encoded: grid.png (the first ``samples``), painting.png
    and painting.gif (the first ``paintings``). ``steps`` other than T works for v1 painters only."""
    with torch.no_grad():
        images = generator(latents[:samples], steps=steps)
        painting = generator.paint(latents[:paintings], steps=steps)
    nrow = max(1, int(math.sqrt(samples)))
    return {"grid.png": png_bytes(grid(images, nrow, value_range, title=title)),
            "painting.png": png_bytes(painting_strip(painting, value_range, title=title)),
            "painting.gif": painting_gif(painting, value_range)}


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default()


def draw(generator: torch.nn.Module, out: str, *, samples: int = 64, paintings: int = 4, seed: int = 0,
         steps: int | None = None, value_range: tuple[float, float] = (-1.0, 1.0)) -> dict[str, str]:
    """Write grid.png, painting.png and painting.gif for fixed latents; returns their locations."""
    device = next(generator.parameters()).device
    latents = torch.randn(max(samples, paintings), generator.config.d_latent,
                          generator=torch.Generator().manual_seed(seed)).to(device)
    written = {}
    for name, data in render(generator, latents, samples, paintings, value_range, steps=steps).items():
        written[name] = storage.join(out, name)
        storage.write_bytes(written[name], data)
    return written
