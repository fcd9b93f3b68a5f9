"""The LightGAN discriminator: shapes, the parameter count Table 3 implies, inputs, gradients, the aux loss."""

import random

import pytest
import torch
import torch.nn.functional as F

from fpa_core import ConfigError, FPAGenerator
from fpa_core.discriminator import Blur, Discriminator, DiscriminatorConfig, DiscOutput, _quadrant

D64_PARAMS = 12_326_632  # the reference's main.py configuration at 64x64, 3 channels
D32_PARAMS = 11_114_764
NARROW = DiscriminatorConfig(fmap_max=64)  # the same layers, narrower: for the tests that train or repeat

# Table 3's "Total Param Count (M)"; afhq-wild's row disagrees with itself (see README).
TABLE3_TOTAL_M = {"celeba": 26, "metfaces": 232, "afhq-cat": 18, "afhq-dog": 26, "lsun-church": 29}


def count(image_size: int, config: DiscriminatorConfig | None = None) -> int:
    with torch.device("meta"):
        return Discriminator(config, image_size).num_parameters()


@pytest.mark.parametrize("size", [16, 32, 64])
def test_output_shapes_and_aux_loss_only_when_asked(size):
    torch.manual_seed(0)
    D = Discriminator(image_size=size)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        out = D(x)
        assert isinstance(out, DiscOutput)
        assert out.logits.shape == (2, 1) and out.logits_small.shape == (2, 1)
        assert out.aux_loss is None
        out = D(x, aux=True)
    assert out.logits.shape == (2, 1) and out.logits_small.shape == (2, 1)
    assert out.aux_loss.shape == () and torch.isfinite(out.aux_loss) and out.aux_loss > 0


@pytest.mark.parametrize("size", [128, 256, 512, 1024])
def test_larger_sizes_give_the_same_shapes(size):
    with torch.device("meta"):  # shapes only, nothing computed
        out = Discriminator(image_size=size)(torch.empty(2, 3, size, size), aux=True)
    assert out.logits.shape == (2, 1) and out.logits_small.shape == (2, 1) and out.aux_loss.shape == ()


def test_a_5x5_map_of_logits_and_other_channel_counts():
    with torch.no_grad():
        out = Discriminator(DiscriminatorConfig(disc_output_size=5), 64)(torch.randn(2, 3, 64, 64), aux=True)
        assert out.logits.shape == (2, 25) and out.logits_small.shape == (2, 1)
        out = Discriminator(image_size=16, channels=1)(torch.randn(2, 1, 16, 16), aux=True)
        assert out.logits.shape == (2, 1) and torch.isfinite(out.aux_loss)


def test_parameter_count_is_the_one_table_3_implies():
    n = count(64)
    assert 12_000_000 <= n <= 12_800_000
    assert n == D64_PARAMS
    assert count(32) == D32_PARAMS
    # painter.py's own defaults (a 5x5 output, no attention) would not fit Table 3
    assert count(64, DiscriminatorConfig(disc_output_size=5, attn_res_layers=[])) < 10_000_000
    # the blur has no parameters
    assert count(64, DiscriminatorConfig(antialias=True)) == D64_PARAMS


def test_a_cpu_sized_discriminator_drops_the_attention_blocks():
    cheap = DiscriminatorConfig(attn_res_layers=[], small_head_attention=False)
    D = Discriminator(cheap, image_size=32)
    assert not any(type(m).__name__ == "Attention" for m in D.modules())
    assert count(32, cheap) < D32_PARAMS
    out = D(torch.randn(2, 3, 32, 32), aux=True)
    assert out.logits.shape == out.logits_small.shape == (2, 1) and out.aux_loss > 0


@pytest.mark.parametrize("preset", sorted(TABLE3_TOTAL_M))
def test_generator_plus_discriminator_is_table_3_total(preset):
    with torch.device("meta"):
        generator = FPAGenerator.from_preset(preset)
    assert round((generator.num_parameters() + D64_PARAMS) / 1e6) == TABLE3_TOTAL_M[preset]


@pytest.mark.parametrize("size", [0, 8, 15, 48, 100, 64.0])
def test_bad_image_size_is_rejected_with_a_clear_message(size):
    with pytest.raises(ValueError, match=r"power of two >= 16.*got image_size="):
        Discriminator(image_size=size)


def test_bad_config_and_bad_inputs_are_rejected():
    with pytest.raises(ConfigError) as e:
        Discriminator(DiscriminatorConfig(disc_output_size=3, attn_res_layers=[24], fmap_max=96,
                                          fmap_inverse_coef=6), 64)
    for field in ("disc_output_size", "attn_res_layers", "fmap_max", "fmap_inverse_coef"):
        assert f"discriminator.{field}" in str(e.value)
    D = Discriminator(image_size=16)
    for shape in [(2, 3, 32, 32), (2, 1, 16, 16), (3, 16, 16)]:
        with pytest.raises(ValueError, match=r"expected images of shape \(B, 3, 16, 16\)"):
            D(torch.randn(shape))


def test_gradients_reach_the_input_and_every_parameter():
    torch.manual_seed(0)
    D = Discriminator(NARROW, image_size=32)
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    out = D(x, aux=True)
    (out.logits.sum() + out.logits_small.sum() + out.aux_loss).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    missing = [name for name, p in D.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


def test_aux_loss_is_deterministic_and_comes_from_the_input():
    def aux(seed, x):
        torch.manual_seed(seed)
        with torch.no_grad():
            return Discriminator(NARROW, image_size=64)(x, aux=True).aux_loss

    x = torch.rand(2, 3, 64, 64) * 2 - 1
    assert torch.equal(aux(0, x), aux(0, x))
    assert not torch.equal(aux(0, x), aux(1, x))
    assert not torch.equal(aux(0, x), aux(0, x.flip(-1)))

    # The target is the input itself: the aux loss moves the input even with the decoder's input frozen.
    torch.manual_seed(0)
    D = Discriminator(NARROW, image_size=16)
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    feats = [D.blocks[0](D.stem(x)).detach()]
    D.reconstruction_loss(x, feats, None).backward()
    assert x.grad.abs().sum() > 0


def test_the_16x16_decoder_crops_a_quadrant_drawn_from_torch_rng_only():
    # 512x512 and above have the second decoder; narrow feature maps keep this fast.
    torch.manual_seed(0)
    D = Discriminator(DiscriminatorConfig(fmap_max=16, attn_res_layers=[]), image_size=512)
    assert D.decoder_16x16 is not None and Discriminator(image_size=256).decoder_16x16 is None
    x = torch.randn(1, 3, 512, 512)
    feats = [torch.randn(1, 16, 16, 16), torch.randn(1, 16, 8, 8)]

    def aux(seed):
        random.seed(seed)  # Python's RNG must not matter
        return D.reconstruction_loss(x, feats, torch.Generator().manual_seed(seed))

    with torch.no_grad():
        losses = [aux(seed) for seed in range(8)]
        assert all(torch.equal(loss, aux(seed)) for seed, loss in enumerate(losses))
        assert len({loss.item() for loss in losses}) > 1
        whole = F.mse_loss(D.decoder_8x8(feats[1]), F.interpolate(x, size=(128, 128)))
        for seed, loss in enumerate(losses):
            q = int(torch.randint(4, (), generator=torch.Generator().manual_seed(seed)))
            recon = D.decoder_16x16(_quadrant(feats[0], q))
            part = F.mse_loss(recon, F.interpolate(_quadrant(x, q), size=(128, 128)))
            torch.testing.assert_close(loss, whole + part)

    assert _quadrant(torch.arange(16.0).view(1, 1, 4, 4), 1).flatten().tolist() == [2.0, 3.0, 6.0, 7.0]


def test_blur_is_a_normalised_121_filter_per_channel():
    blur = Blur()
    assert torch.allclose(blur(torch.full((1, 2, 5, 5), 3.0)), torch.full((1, 2, 5, 5), 3.0))
    x = torch.zeros(1, 2, 5, 5)
    x[0, 1, 2, 2] = 16.0
    y = blur(x)
    assert y[0, 0].abs().sum() == 0  # channels stay apart
    expected = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]])
    torch.testing.assert_close(y[0, 1, 1:4, 1:4], expected)
    assert y[0, 1].sum() == 16.0 and len(list(blur.parameters())) == 0 and not blur.state_dict()


def test_adam_on_the_aux_loss_alone_reduces_it():
    torch.manual_seed(0)
    D = Discriminator(NARROW, image_size=16)
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    opt = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.9))  # the reference optimiser
    losses = []
    for _ in range(6):
        loss = D(x, aux=True).aux_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.95 * losses[0], losses
