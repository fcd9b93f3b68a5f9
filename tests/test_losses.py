"""Hinge losses, the reconstruction loss, the gradient penalty, and DiffAugment."""

import pytest
import torch

from fpa_core.augment import POLICIES, diff_augment, maybe_augment
from fpa_core.discriminator import DiscOutput
from fpa_core.losses import (discriminator_loss, generator_loss, gradient_penalty, hinge_d, hinge_g,
                             reconstruction_loss)


def out(logits, small=None, aux=None) -> DiscOutput:
    logits = torch.as_tensor(logits, dtype=torch.float32).view(-1, 1)
    small = logits if small is None else torch.as_tensor(small, dtype=torch.float32).view(-1, 1)
    return DiscOutput(logits, small, aux)


# hinge


def test_hinge_d_is_zero_only_past_the_margins():
    assert hinge_d(torch.tensor([1.0, 3.0]), torch.tensor([-1.0, -5.0])) == 0
    assert hinge_d(torch.tensor([0.5, 3.0]), torch.tensor([-1.0, -5.0])) == pytest.approx(0.25)
    assert hinge_d(torch.tensor([1.0, 3.0]), torch.tensor([0.0, -5.0])) == pytest.approx(0.5)
    assert hinge_d(torch.zeros(4), torch.zeros(4)) == pytest.approx(2.0)
    # swapped (real looks fake and fake looks real) is the worst case
    assert hinge_d(torch.tensor([-2.0]), torch.tensor([2.0])) == pytest.approx(6.0)


def test_discriminator_loss_sums_both_heads():
    real, fake = out([1.0, 2.0], small=[0.0, 0.0]), out([-1.0, -1.0], small=[-3.0, 1.0])
    assert discriminator_loss(real, fake) == pytest.approx(0.0 + (1.0 + 1.0))
    assert discriminator_loss(out([2.0], [2.0]), out([-2.0], [-2.0])) == 0


def test_generator_loss_falls_as_fake_logits_rise():
    losses = [generator_loss(out([v, v + 1.0], small=[v])).item() for v in (-3.0, -1.0, 0.0, 2.0)]
    assert losses == sorted(losses, reverse=True) and len(set(losses)) == 4
    assert hinge_g(torch.tensor([1.0, 3.0])) == pytest.approx(-2.0)
    assert generator_loss(out([1.0], small=[3.0])) == pytest.approx(-4.0)


def test_reconstruction_loss_needs_the_aux_output():
    assert reconstruction_loss(out([0.0], aux=torch.tensor(0.3))) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="aux=True"):
        reconstruction_loss(out([0.0]))


# gradient penalty


def unit_directions(batch: int, shape=(3, 8, 8)) -> torch.Tensor:
    u = torch.randn(batch, *shape)
    return u / u.flatten(1).norm(dim=1).view(-1, 1, 1, 1)


def linear_critic(x: torch.Tensor, u: torch.Tensor) -> DiscOutput:
    """Both heads linear in x, so d(sum of both heads)/dx = u per image."""
    f = (x * u).flatten(1).sum(1, keepdim=True)  # (B, 1)
    return DiscOutput(0.25 * f, 0.75 * f)


def test_gradient_penalty_is_zero_for_unit_norm_gradients():
    torch.manual_seed(0)
    x = torch.randn(5, 3, 8, 8, requires_grad=True)
    gp = gradient_penalty(x, linear_critic(x, unit_directions(5)), weight=10.0)
    assert gp.item() == pytest.approx(0.0, abs=1e-9)


def test_gradient_penalty_is_weighted_and_positive_otherwise():
    torch.manual_seed(0)
    x = torch.randn(5, 3, 8, 8, requires_grad=True)
    u = unit_directions(5) * torch.tensor([3.0, 3.0, 3.0, 3.0, 0.0]).view(-1, 1, 1, 1)  # norms 3, 3, 3, 3, 0
    gp = gradient_penalty(x, linear_critic(x, u), weight=10.0)
    assert gp.item() == pytest.approx(10.0 * (4 * 4 + 1) / 5, rel=1e-5)


def test_gradient_penalty_trains_the_critic():
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    w = torch.full((3, 8, 8), 0.5, requires_grad=True)
    gp = gradient_penalty(x, linear_critic(x, w.expand(2, -1, -1, -1)), weight=1.0)
    gp.backward()
    assert gp > 0 and w.grad is not None and w.grad.abs().sum() > 0


def test_gradient_penalty_needs_images_that_require_grad():
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match="requires_grad"):
        gradient_penalty(x, linear_critic(x, unit_directions(2)), weight=10.0)


# augmentation


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("policy", [["color"], ["translation"], ["cutout"], ["color", "translation", "cutout"]])
def test_augment_keeps_shape_and_dtype(policy, dtype):
    x = torch.rand(4, 3, 16, 12, dtype=dtype)
    y = diff_augment(x, policy, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.dtype == dtype


def test_empty_policy_is_identity():
    x = torch.rand(3, 3, 16, 16)
    state = torch.get_rng_state()
    assert torch.equal(diff_augment(x), x) and torch.equal(diff_augment(x, []), x)
    assert torch.equal(maybe_augment(x, 0.0, list(POLICIES)), x)
    assert torch.equal(torch.get_rng_state(), state)  # and no random number was drawn


def test_augment_is_deterministic_under_a_seed():
    x = torch.rand(4, 3, 16, 16)
    policy = ["color", "translation", "cutout"]
    a = diff_augment(x, policy, torch.Generator().manual_seed(3))
    b = diff_augment(x, policy, torch.Generator().manual_seed(3))
    c = diff_augment(x, policy, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(3)
    d = diff_augment(x, policy)
    torch.manual_seed(3)
    assert torch.equal(d, diff_augment(x, policy))
    e = maybe_augment(x, 1.0, policy, torch.Generator().manual_seed(5))
    assert torch.equal(e, maybe_augment(x, 1.0, policy, torch.Generator().manual_seed(5)))


def test_translation_shifts_content_and_fills_with_zeros():
    x = torch.rand(64, 3, 16, 16) + 1  # no zeros in the image itself
    y = diff_augment(x, ["translation"], torch.Generator().manual_seed(0))
    moved = (y != x).flatten(1).any(1)
    assert moved.float().mean() > 0.8  # shifts are in [-2, 2]^2: (0, 0) has probability 1/25
    assert ((y == 0) | (y >= 1)).all()  # every pixel is an input pixel or the zero border
    for i in range(64):  # each image is a shifted copy of its input
        found = any(torch.equal(y[i, :, max(0, -dy):16 - max(0, dy), max(0, -dx):16 - max(0, dx)],
                                x[i, :, max(0, dy):16 + min(0, dy), max(0, dx):16 + min(0, dx)])
                    for dy in range(-2, 3) for dx in range(-2, 3))
        assert found, i


def test_cutout_zeroes_one_square_per_image():
    x = torch.rand(32, 3, 16, 16) + 1
    y = diff_augment(x, ["cutout"], torch.Generator().manual_seed(0))
    zero = (y == 0).all(dim=1)  # (B, H, W): all channels cut alike
    assert torch.equal(zero, (y == 0).any(dim=1))
    assert torch.equal(y[~zero.unsqueeze(1).expand_as(y)], x[~zero.unsqueeze(1).expand_as(x)])
    for mask in zero:
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        assert 4 <= len(rows) <= 8 and 4 <= len(cols) <= 8  # a half-size square, clipped at the border
        assert mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
        assert mask.sum() == len(rows) * len(cols)


def test_color_changes_values_and_augment_is_differentiable():
    x = torch.rand(4, 3, 16, 16, requires_grad=True)
    y = diff_augment(x, ["color", "translation", "cutout"], torch.Generator().manual_seed(0))
    assert not torch.equal(diff_augment(x.detach(), ["color"], torch.Generator().manual_seed(0)), x.detach())
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_unknown_policy_is_rejected():
    with pytest.raises(ValueError, match="unknown augmentation policy"):
        diff_augment(torch.rand(1, 3, 8, 8), ["colour"])
