"""The U-Net refinement stage (Sec. 3.2): shapes, size, a frozen FPA, and a stage run end to end."""

import pytest
import torch
from PIL import Image

from fpa_core import checkpoint, pictures
from fpa_core.checkpoint import load_generator
from fpa_core.config import ConfigError
from fpa_core.model import FPAGenerator
from fpa_core.model_config import ModelConfig, UNetConfig
from fpa_core.pictures import draw
from fpa_core.train.config import load_config
from fpa_core.train.trainer import Trainer
from fpa_core.unet import RefinedGenerator, ReferenceUNet, ResnetUNet, build_unet
from test_train import TINY

TINY_UNET = {"dim": 8, "dim_mults": [1, 2, 2], "blocks": 1, "groups": 4}


@pytest.fixture
def tiny(image_folder):
    """The tiny training config on the small image folder (its real features take a second, not digits' 40 s)."""
    return {**TINY, "data": {"dataset": str(image_folder), "resolution": 16}}


@pytest.mark.parametrize("arch", ["reference", "resnet"])
@pytest.mark.parametrize("size", [(16, 16), (32, 48), (64, 64)])
def test_the_unet_keeps_the_image_shape(size, arch):
    unet = build_unet(UNetConfig(**TINY_UNET, arch=arch, output_tanh=arch == "reference"))
    image = torch.randn(2, 3, *size)
    out = unet(image)
    assert out.shape == image.shape
    if arch == "reference":  # tanh(UNet(.)), as the authors' code
        assert out.abs().max() < 1


def test_the_default_unet_is_the_authors_with_its_7_99m_parameters():  # Appendix C.1: "about 8 M"
    with torch.device("meta"):
        reference = build_unet(UNetConfig())
        resnet = build_unet(UNetConfig(arch="resnet", dim_mults=[1, 2, 3], output_tanh=False))
    assert isinstance(reference, ReferenceUNet) and isinstance(resnet, ResnetUNet)
    assert sum(p.numel() for p in reference.parameters()) == 7_985_475  # IDSIA/fpainter's Unet(64, (1, 2, 4))
    assert sum(p.numel() for p in resnet.parameters()) == 8_457_475
    assert UNetConfig().halvings == 2 and UNetConfig(arch="resnet", output_tanh=False).halvings == 3


def test_a_unet_checkpoint_from_before_arch_loads_as_the_resnet_unet(tmp_path):
    old = {"dim": 8, "dim_mults": [1, 2, 2], "blocks": 1, "groups": 4, "channels": 3}  # no arch, no output_tanh
    checkpoint.save(str(tmp_path / "old.pt"), {"step": 0, "config": {"stage": "unet", "unet": old}})
    assert checkpoint.load(str(tmp_path / "old.pt"))["config"]["unet"] == {**old, "arch": "resnet",
                                                                           "output_tanh": False}


def test_bad_unet_fields_are_named():
    with pytest.raises(ConfigError, match="unet.groups: 3 must divide"):
        load_config("digits", {**TINY, "stage": "unet", "unet": {"groups": 3}})
    with pytest.raises(ConfigError) as e:  # five halvings of a 16x16 image, and no base to refine
        load_config("digits", {**TINY, "stage": "unet", "unet": {**TINY_UNET, "dim_mults": [1, 2, 2, 2, 2, 2]}})
    assert "unet.dim_mults" in str(e.value) and "base_generator" in str(e.value)


def test_only_the_unet_learns_and_the_paintings_end_with_its_output(tmp_path, tiny):
    base_run = tmp_path / "fpa"
    Trainer(load_config("digits", tiny), str(base_run)).train()
    base_uri = str(base_run / "checkpoints" / "best.pt")
    config = load_config("digits", {**tiny, "stage": "unet", "base_generator": base_uri, "unet": TINY_UNET,
                                    "model": {**tiny["model"], "d_hidden": 999}})  # the base decides the model
    trainer = Trainer(config, str(tmp_path / "unet"))
    assert isinstance(trainer.G, RefinedGenerator) and trainer.cfg.model.d_hidden == tiny["model"]["d_hidden"]
    base = checkpoint.load(base_uri)  # the stage starts from the base's raw G and its D, as the authors' code
    assert all(torch.equal(v, base["generator"][k]) for k, v in trainer.G.fpa.state_dict().items())
    assert all(torch.equal(v, base["discriminator"][k]) for k, v in trainer.D.state_dict().items())
    fpa_before = {k: v.clone() for k, v in trainer.G.fpa.state_dict().items()}
    unet_before = {k: v.clone() for k, v in trainer.G.unet.state_dict().items()}
    summary = trainer.train()

    assert all(torch.equal(v, fpa_before[k]) for k, v in trainer.G.fpa.state_dict().items())
    assert any(not torch.equal(v, unet_before[k]) for k, v in trainer.G.unet.state_dict().items())
    base_state = checkpoint.load(base_uri)
    base_fid = next(e["fid"] for e in base_state["evaluations"] if e["step"] == base_state["step"])
    assert summary["stage"] == "unet" and summary["base"]["fid"] == base_fid and summary["best"]["fid"] is not None
    strip = Image.open(tmp_path / "unet" / "painting" / "strip-00000008.png")
    cell = 16 * pictures.scale_for(16, 16) + pictures.GAP
    # T = 8 canvases, then the U-Net's output; a title and a row of step numbers on top
    assert strip.size == (9 * cell + pictures.GAP, 2 * pictures.LABEL + 2 * 2 * cell + pictures.GAP)

    generator = load_generator(str(tmp_path / "unet" / "checkpoints" / "best.pt"))
    assert isinstance(generator, RefinedGenerator) and isinstance(generator.fpa, FPAGenerator)
    assert set(draw(generator, str(tmp_path / "pictures"), samples=4, paintings=1)) == {
        "grid.png", "painting.png", "painting.gif"}


def test_a_unet_stage_resumes_without_its_base_file(tmp_path, tiny):
    Trainer(load_config("digits", {**tiny, "steps": 4}), str(tmp_path / "fpa")).train()
    base = tmp_path / "fpa" / "checkpoints" / "best.pt"
    config = load_config("digits", {**tiny, "steps": 4, "stage": "unet", "base_generator": str(base),
                                    "unet": TINY_UNET})
    Trainer(config, str(tmp_path / "unet")).train()
    base.unlink()  # the stage's checkpoints hold the frozen FPA's weights too
    summary = Trainer.resume(str(tmp_path / "unet"), {"steps": 6}).train()
    assert summary["steps"] == 6


def test_a_unet_needs_an_fpa_base_of_the_right_size(tmp_path, tiny):
    Trainer(load_config("digits", {**tiny, "steps": 2}), str(tmp_path / "fpa")).train()
    base = str(tmp_path / "fpa" / "checkpoints" / "best.pt")
    config = load_config("digits", {**tiny, "stage": "unet", "base_generator": base, "unet": TINY_UNET,
                                    "data": {**tiny["data"], "resolution": 32}, "model": {"height": 32, "width": 32}})
    with pytest.raises(ValueError, match="data.resolution"):
        Trainer(config, str(tmp_path / "unet"))


def test_refined_generator_forward_is_unet_of_fpa():
    fpa = FPAGenerator(ModelConfig(d_latent=8, d_in=2, d_in_proj=8, d_hidden=16, height=16, width=16, steps=4))
    refined = RefinedGenerator(fpa, build_unet(UNetConfig(**TINY_UNET))).eval()
    z = torch.randn(3, 8)
    assert torch.allclose(refined(z), refined.unet(fpa(z)), atol=1e-5)
    assert not any(p.requires_grad for p in refined.fpa.parameters())
