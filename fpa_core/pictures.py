"""Pictures of a generator: sample grids and the painting process of Figure 5.

The painting strip shows, for each latent, the T rank-1 updates (top mini-row) above the T
cumulative canvases W_t (bottom mini-row). As in the paper's Figure 5, each picture X is rescaled to
the norm of the final image, X * ||W_T|| / ||X||, then passed through tanh. A U-Net's refinement
(Figure 3) follows the last canvas, as it is, beside the FPA's own output above it.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from fpa_core.images import to_uint8
from fpa_core.model import Painting

GAP = 2  # pixels between pictures


def grid(images: Tensor, nrow: int) -> Image.Image:
    """Tile (B, C, H, W) images in [-1, 1] into rows of ``nrow`` on a white background."""
    pictures = to_uint8(images)
    count, height, width, _ = pictures.shape
    ncol, nrows = min(nrow, count), -(-count // nrow)
    canvas = np.full((nrows * (height + GAP) + GAP, ncol * (width + GAP) + GAP, 3), 255, np.uint8)
    for i, picture in enumerate(pictures):
        top, left = GAP + (i // nrow) * (height + GAP), GAP + (i % nrow) * (width + GAP)
        canvas[top:top + height, left:left + width] = picture
    return Image.fromarray(canvas)


def normalised_steps(painting: Painting) -> tuple[Tensor, Tensor]:
    """Updates and canvases, each rescaled to the final image's norm, then tanh: (B, T, c, H, W) each."""
    final = painting.canvases[:, -1:]  # (B, 1, c, H, W)
    target = final.flatten(2).norm(dim=-1)[..., None, None, None]  # (B, 1, 1, 1, 1)

    def rescale(x: Tensor) -> Tensor:
        norm = x.flatten(2).norm(dim=-1)[..., None, None, None]  # (B, T, 1, 1, 1)
        return torch.tanh(x * target / norm.clamp_min(1e-12))

    return rescale(painting.updates), rescale(painting.canvases)


def painting_strip(painting: Painting) -> Image.Image:
    """For each latent, a row of the T updates above a row of the T canvases."""
    updates, canvases = normalised_steps(painting)
    if painting.refined is not None:  # one more column: the FPA's output above the U-Net's
        updates = torch.cat([updates, painting.image[:, None]], dim=1)
        canvases = torch.cat([canvases, painting.refined[:, None]], dim=1)
    B, T = updates.shape[:2]
    rows = []
    for b in range(B):
        rows += [updates[b], canvases[b]]
    return grid(torch.cat(rows), nrow=T)


def painting_gif(painting: Painting, duration_ms: int = 120) -> bytes:
    """An animated GIF: frame t shows each latent's update t beside its canvas W_t."""
    updates, canvases = normalised_steps(painting)
    B, T = updates.shape[:2]
    frames = []
    for t in range(T):
        pairs = torch.stack([updates[:, t], canvases[:, t]], dim=1).flatten(0, 1)  # (2B, c, H, W)
        frames.append(grid(pairs, nrow=2))
    if painting.refined is not None:  # the FPA's output beside the U-Net's refinement of it
        frames.append(grid(torch.stack([painting.image, painting.refined], dim=1).flatten(0, 1), nrow=2))
    frames += [frames[-1]] * 8  # hold the finished picture
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=duration_ms, loop=0)
    return buffer.getvalue()


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
