"""The LightGAN discriminator: shapes, the parameter count Table 3 implies, inputs, gradients, the aux loss."""

import random

import pytest
import torch
import torch.nn.functional as F

from fpa_core import ConfigError, FPAGenerator
from fpa_core.discriminator import Blur, Discriminator, DiscOutput, _quadrant
from fpa_core.model_config import DiscriminatorConfig

D64_PARAMS = 12_326_632  # the reference's main.py configuration at 64x64, 3 channels
D32_PARAMS = 11_114_764
NARROW = DiscriminatorConfig(fmap_max=64)  # the same layers, narrower: for the tests that train or repeat

# Table 3's "Total Param Count (M)"; afhq-wild's row disagrees with itself (see docs/configs.md).
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


def _reference_attention(attn, x):
    """The reference's LinearAttention (lucidrains' lightweight-gan): F.unfold neighbourhoods, per-pixel products."""
    B, _, H, W = x.shape
    h, d = attn.heads, attn.dim_head

    def split_heads(t):  # (B, h * d, H, W) -> (B * h, H * W, d)
        return t.reshape(B * h, d, H * W).transpose(1, 2)

    def merge_heads(t):  # (B * h, H * W, d) -> (B, h * d, H, W)
        return t.transpose(1, 2).reshape(-1, h * d, H, W)

    q = split_heads(attn.to_lin_q(x)).softmax(dim=-1) * attn.scale
    k, v = (split_heads(t) for t in attn.to_lin_kv(x).chunk(2, dim=1))
    lin_out = torch.nn.functional.gelu(merge_heads(q @ (k.softmax(dim=-2).transpose(1, 2) @ v)))
    q = split_heads(attn.to_q(x)) * attn.scale
    k, v = (t.reshape(B * h, d, H, W) for t in attn.to_kv(x).chunk(2, dim=1))
    k, v = (torch.nn.functional.unfold(t, 3, padding=1).view(B * h, d, 9, H * W).permute(0, 3, 2, 1) for t in (k, v))
    sim = (k @ q.unsqueeze(-1)).squeeze(-1)  # (B * h, N, 9)
    weights = (sim - sim.amax(dim=-1, keepdim=True).detach()).softmax(dim=-1)
    local_out = merge_heads((weights.unsqueeze(-2) @ v).squeeze(-2))
    return attn.to_out(torch.cat([lin_out, local_out], dim=1))


@pytest.mark.parametrize("dim, size", [(8, 5), (32, 16)])
def test_linear_attention_equals_the_unfold_form_of_the_reference(dim, size):
    from fpa_core.discriminator import LinearAttention

    torch.manual_seed(dim)
    attn = LinearAttention(dim).double()
    x = torch.randn(2, dim, size, size + 1, dtype=torch.float64, requires_grad=True)
    ours, theirs = attn(x), _reference_attention(attn, x)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)
    grads = [torch.autograd.grad(out.square().sum(), [x, *attn.parameters()]) for out in (ours, theirs)]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_window_attention_matches_its_plain_form_to_second_order():
    from fpa_core.window_attention import window_attention, window_attention_reference

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True) for _ in range(3))
    torch.testing.assert_close(window_attention(q, k, v), window_attention_reference(q, k, v), rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(window_attention, (q, k, v))
    assert torch.autograd.gradgradcheck(window_attention, (q, k, v))  # the gradient penalty differentiates it twice


def test_judging_fakes_and_reals_in_one_batch_equals_two_calls():
    torch.manual_seed(0)
    D = Discriminator(DiscriminatorConfig(fmap_max=16, attn_res_layers=[16]), image_size=32).double()
    fakes, reals = torch.randn(3, 3, 32, 32, dtype=torch.float64), torch.randn(2, 3, 32, 32, dtype=torch.float64)
    fake_out, real_out = D.judge(fakes, reals)
    apart_fake, apart_real = D(fakes), D(reals, aux=True)
    for a, b in ((fake_out.logits, apart_fake.logits), (fake_out.logits_small, apart_fake.logits_small),
                 (real_out.logits, apart_real.logits), (real_out.aux_loss, apart_real.aux_loss)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert fake_out.aux_loss is None


def test_channels_last_is_the_same_function():
    torch.manual_seed(0)
    D = Discriminator(DiscriminatorConfig(fmap_max=16, attn_res_layers=[16]), image_size=32).double()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    before = D(x, aux=True)
    D.to_channels_last()
    after = D(x, aux=True)
    torch.testing.assert_close(after.logits, before.logits, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(after.aux_loss, before.aux_loss, rtol=1e-12, atol=1e-12)
    assert D.blocks[0].conv[1].weight.is_contiguous(memory_format=torch.channels_last)
