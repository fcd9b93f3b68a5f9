"""The LightGAN losses: hinge over both discriminator heads, the reals' reconstruction, a gradient penalty.

Convention: D's logits are high for real images.

    d_loss = mean relu(1 - D(real)) + mean relu(1 + D(fake))      summed over the two heads
    g_loss = -mean D(fake)                                        summed over the two heads

The reference code (lucidrains' lightweight-gan, IDSIA/fpainter) uses the opposite sign: its D is
trained with mean relu(1 + real) + relu(1 - fake) and G minimises mean D(fake), so its logits are
low for reals. Its D is ours with the last conv of each head negated; the losses, and the symmetric
initialisation, are otherwise the same.

A discriminator step of the reference adds, all with weight 1: the hinge loss of both heads, the
reals' reconstruction loss, and, every few steps, the gradient penalty.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fpa_core.discriminator import DiscOutput


def hinge_d(real: Tensor, fake: Tensor) -> Tensor:
    """One head's hinge loss for D: 0 once real logits are >= 1 and fake ones <= -1."""
    return F.relu(1 - real).mean() + F.relu(1 + fake).mean()


def hinge_g(fake: Tensor) -> Tensor:
    """One head's loss for G: it raises D's logits on its images."""
    return -fake.mean()


def discriminator_loss(real: DiscOutput, fake: DiscOutput) -> Tensor:
    """The hinge loss of the main head plus that of the 32x32 head."""
    return hinge_d(real.logits, fake.logits) + hinge_d(real.logits_small, fake.logits_small)


def generator_loss(fake: DiscOutput) -> Tensor:
    """G's loss from both heads."""
    return hinge_g(fake.logits) + hinge_g(fake.logits_small)


def reconstruction_loss(real: DiscOutput) -> Tensor:
    """The reals' self-supervised reconstruction loss, as D computed it: call D(reals, aux=True)."""
    if real.aux_loss is None:
        raise ValueError("no reconstruction loss in this output: call the discriminator on reals with aux=True")
    return real.aux_loss


def gradient_penalty(images: Tensor, real: DiscOutput, weight: float) -> Tensor:
    """weight * mean over the batch of (||d(sum of both heads' logits) / d image||_2 - 1)^2.

    ``images`` are the reals with requires_grad set before they went through any augmentation and
    D; ``real`` is D's output on them. The penalty is differentiable (create_graph), so it trains D.
    The reference applies it to reals only.
    """
    if not images.requires_grad:
        raise ValueError("set images.requires_grad_() before calling the discriminator on them")
    outputs = [real.logits, real.logits_small]
    grads, = torch.autograd.grad(outputs, images, grad_outputs=[torch.ones_like(t) for t in outputs],
                                 create_graph=True)  # (B, c, H, W)
    norms = grads.flatten(1).norm(2, dim=1)  # (B,)
    return weight * (norms - 1).square().mean()
