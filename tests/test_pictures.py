"""Sample grids and painting strips: sizes, enlargement, labels, the data's range, and the paint command line."""

import io
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import run_main
from PIL import Image

from fpa_core import pictures
from fpa_core.model import FPAGenerator
from fpa_core.model_config import ModelConfig
from fpa_core.paint import main as paint_main
from fpa_core.pictures import GAP, LABEL

SCALE = pictures.scale_for(12, 10)  # 7: 10 px wide becomes 70 >= MIN_CELL
CELL_W, CELL_H = 10 * SCALE + GAP, 12 * SCALE + GAP


def tiny_generator(**overrides):
    torch.manual_seed(0)
    return FPAGenerator(ModelConfig(**{**dict(d_latent=8, d_in=2, d_in_proj=8, d_hidden=16, num_layers=1,
                                               height=12, width=10, steps=6), **overrides}))


def test_grid_tiles_enlarged_images_with_gaps():
    images = torch.zeros(5, 3, 12, 10)
    images[0] = 1.0  # white
    images[1] = -1.0  # black
    img = pictures.grid(images, nrow=3)
    assert SCALE * 10 >= pictures.MIN_CELL > (SCALE - 1) * 10
    assert img.size == (3 * CELL_W + GAP, 2 * CELL_H + GAP)
    arr = np.asarray(img)
    assert (arr[GAP:GAP + 12 * SCALE, GAP:GAP + 10 * SCALE] == 255).all()
    assert (arr[GAP:GAP + 12 * SCALE, CELL_W + GAP:2 * CELL_W] == 0).all()
    assert (arr[GAP:GAP + 12 * SCALE, 2 * CELL_W + GAP:3 * CELL_W] == 128).all()  # 0.0 maps to mid-grey
    assert pictures.grid(images, nrow=3, scale=1).size == (3 * 12 + GAP, 2 * 14 + GAP)


def test_nearest_enlargement_repeats_every_pixel():
    image = torch.rand(1, 1, 4, 4) * 2 - 1
    arr = np.asarray(pictures.grid(image, nrow=1, scale=3))[GAP:GAP + 12, GAP:GAP + 12, 0]
    np.testing.assert_array_equal(arr, np.asarray(pictures.grid(image, nrow=1, scale=1))[GAP:GAP + 4, GAP:GAP + 4, 0]
                                  .repeat(3, 0).repeat(3, 1))


def test_images_in_the_unit_range_map_zero_to_black():
    images = torch.tensor([0.0, 0.5, 1.0, -0.5]).view(4, 1, 1, 1).expand(4, 1, 2, 2)
    arr = np.asarray(pictures.grid(images, nrow=4, value_range=(0.0, 1.0), scale=1))
    assert [arr[GAP, GAP + i * (2 + GAP), 0] for i in range(4)] == [0, 128, 255, 0]  # below 0 is clipped


def test_painting_strip_has_step_numbers_then_updates_above_canvases():
    painting = tiny_generator().paint(torch.randn(3, 8))
    img = pictures.painting_strip(painting)
    assert img.size == (6 * CELL_W + GAP, LABEL + 2 * 3 * CELL_H + GAP)
    assert np.asarray(img)[:LABEL].min() < 200  # the step numbers are drawn
    titled = pictures.painting_strip(painting, title="step 100")
    assert titled.size == (img.width, img.height + LABEL)


def test_steps_are_rescaled_to_the_final_norm_then_tanh():
    painting = tiny_generator(output_tanh=False).paint(torch.randn(2, 8))
    updates, canvases = pictures.normalised_steps(painting)
    final = painting.canvases[:, -1]
    torch.testing.assert_close(canvases[:, -1], torch.tanh(final))
    expected = torch.tanh(painting.updates[:, 2] * final.flatten(1).norm(dim=1)[:, None, None, None]
                          / painting.updates[:, 2].flatten(1).norm(dim=1)[:, None, None, None])
    torch.testing.assert_close(updates[:, 2], expected)


def test_painting_gif_has_one_captioned_frame_per_step_then_a_hold():
    painting = tiny_generator().paint(torch.randn(2, 8))
    gif = Image.open(io.BytesIO(pictures.painting_gif(painting)))
    assert gif.format == "GIF" and gif.n_frames >= 6
    assert gif.size == (2 * CELL_W + GAP, LABEL + 2 * CELL_H + GAP)


def test_render_draws_the_three_pictures_of_one_generator():
    generator = tiny_generator()
    drawn = pictures.render(generator, torch.randn(9, 8), samples=9, paintings=2, title="step 3")
    assert set(drawn) == {"grid.png", "painting.png", "painting.gif"}
    assert Image.open(io.BytesIO(drawn["grid.png"])).size == (3 * CELL_W + GAP, LABEL + 3 * CELL_H + GAP)


@pytest.mark.process
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
    assert Image.open(out / "grid.png").size == (3 * CELL_W + GAP, 3 * CELL_H + GAP)
    assert Image.open(out / "painting.png").size == (6 * CELL_W + GAP, LABEL + 4 * CELL_H + GAP)
    assert Image.open(out / "painting.gif").format == "GIF"

    missing = run_main(paint_main, "--checkpoint", str(tmp_path / "none.pt"), "--out", str(out))  # in this process
    assert missing.returncode == 2 and "no checkpoint at" in missing.stderr
