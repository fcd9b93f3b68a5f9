"""Sample grids and painting strips: sizes, normalisation, and the paint command line."""

import io
import subprocess
import sys

import numpy as np
import torch
from PIL import Image

from fpa_core import pictures
from fpa_core.model import FPAGenerator, ModelConfig
from fpa_core.pictures import GAP


def tiny_generator(**overrides):
    torch.manual_seed(0)
    return FPAGenerator(ModelConfig(**{**dict(d_latent=8, d_in=2, d_in_proj=8, d_hidden=16, num_layers=1,
                                               height=12, width=10, steps=6), **overrides}))


def test_grid_tiles_images_with_gaps():
    images = torch.zeros(5, 3, 12, 10)
    images[0] = 1.0  # white
    images[1] = -1.0  # black
    img = pictures.grid(images, nrow=3)
    assert img.size == (3 * (10 + GAP) + GAP, 2 * (12 + GAP) + GAP)
    arr = np.asarray(img)
    assert (arr[GAP:GAP + 12, GAP:GAP + 10] == 255).all()
    assert (arr[GAP:GAP + 12, 2 * GAP + 10:2 * GAP + 20] == 0).all()
    assert (arr[GAP:GAP + 12, 3 * GAP + 20:3 * GAP + 30] == 128).all()  # 0.0 maps to mid-grey


def test_painting_strip_has_updates_above_canvases_for_each_latent():
    painting = tiny_generator().paint(torch.randn(3, 8))
    img = pictures.painting_strip(painting)
    assert img.size == (6 * (10 + GAP) + GAP, 2 * 3 * (12 + GAP) + GAP)


def test_steps_are_rescaled_to_the_final_norm_then_tanh():
    painting = tiny_generator(output_tanh=False).paint(torch.randn(2, 8))
    updates, canvases = pictures.normalised_steps(painting)
    final = painting.canvases[:, -1]
    torch.testing.assert_close(canvases[:, -1], torch.tanh(final))
    expected = torch.tanh(painting.updates[:, 2] * final.flatten(1).norm(dim=1)[:, None, None, None]
                          / painting.updates[:, 2].flatten(1).norm(dim=1)[:, None, None, None])
    torch.testing.assert_close(updates[:, 2], expected)


def test_painting_gif_has_one_frame_per_step_then_a_hold():
    painting = tiny_generator().paint(torch.randn(2, 8))
    gif = Image.open(io.BytesIO(pictures.painting_gif(painting)))
    assert gif.format == "GIF" and gif.n_frames >= 6
    assert gif.size == (2 * (10 + GAP) + GAP, 2 * (12 + GAP) + GAP)


def test_paint_cli_draws_from_a_checkpoint(tmp_path):
    from fpa_core import checkpoint
    from fpa_core.config import to_dict

    G = tiny_generator()
    checkpoint.save(str(tmp_path / "c.pt"), {"config": {"model": to_dict(G.config)},
                                             "generator": G.state_dict(), "generator_ema": G.state_dict()})
    out = tmp_path / "pictures"
    result = subprocess.run([sys.executable, "-m", "fpa_core.paint", "--checkpoint", str(tmp_path / "c.pt"),
                             "--out", str(out), "--samples", "9", "--paintings", "2"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert Image.open(out / "grid.png").size == (3 * (10 + GAP) + GAP, 3 * (12 + GAP) + GAP)
    assert Image.open(out / "painting.png").size == (6 * (10 + GAP) + GAP, 4 * (12 + GAP) + GAP)
    assert Image.open(out / "painting.gif").format == "GIF"

    missing = subprocess.run([sys.executable, "-m", "fpa_core.paint", "--checkpoint", str(tmp_path / "none.pt"),
                              "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "no checkpoint at" in missing.stderr
