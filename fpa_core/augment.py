"""Differentiable augmentation (DiffAugment; Zhao et al., 2020), applied alike to reals and fakes before D.

    diff_augment(x, ["color", "translation", "cutout"])   each policy name applies its functions in turn
    color:        brightness + U(-0.5, 0.5), saturation x U(0, 2), contrast x U(0.5, 1.5), per image
    translation:  shift by up to 1/8 of the size in each direction, per image; the uncovered border is 0
    cutout:       zero a square of half the size at a random centre, per image (clipped at the border)

Every draw comes from torch (``generator``, or torch's global RNG), so a run resumes bit-exactly
from the RNG states in its checkpoint; the generator must live on the images' device. The
reference trains without augmentation (aug_prob 0); ``maybe_augment`` is its wrapper, for when
augmentation is switched on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def _uniform(x: Tensor, generator: torch.Generator | None) -> Tensor:  # (B, 1, 1, 1) in [0, 1)
    return torch.rand(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device, generator=generator)


def rand_brightness(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    return x + (_uniform(x, generator) - 0.5)


def rand_saturation(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    mean = x.mean(dim=1, keepdim=True)  # (B, 1, H, W)
    return (x - mean) * (2 * _uniform(x, generator)) + mean


def rand_contrast(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    return (x - mean) * (_uniform(x, generator) + 0.5) + mean


def rand_translation(x: Tensor, generator: torch.Generator | None = None, ratio: float = 0.125) -> Tensor:
    B, _, H, W = x.shape
    max_dy, max_dx = int(H * ratio + 0.5), int(W * ratio + 0.5)
    dy = torch.randint(-max_dy, max_dy + 1, (B, 1, 1), device=x.device, generator=generator)
    dx = torch.randint(-max_dx, max_dx + 1, (B, 1, 1), device=x.device, generator=generator)
    # Output pixel (i, j) reads input pixel (i + dy, j + dx); out of range, it reads the zero border.
    rows = (torch.arange(H, device=x.device).view(1, H, 1) + dy + 1).clamp(0, H + 1)  # (B, H, 1)
    cols = (torch.arange(W, device=x.device).view(1, 1, W) + dx + 1).clamp(0, W + 1)  # (B, 1, W)
    padded = F.pad(x, (1, 1, 1, 1)).permute(0, 2, 3, 1)  # (B, H + 2, W + 2, C)
    batch = torch.arange(B, device=x.device).view(B, 1, 1)
    return padded[batch, rows, cols].permute(0, 3, 1, 2)  # (B, C, H, W)


def rand_cutout(x: Tensor, generator: torch.Generator | None = None, ratio: float = 0.5) -> Tensor:
    B, _, H, W = x.shape
    size_y, size_x = int(H * ratio + 0.5), int(W * ratio + 0.5)
    # The square spans [centre - size // 2, centre - size // 2 + size), centre drawn as the reference does.
    top = torch.randint(0, H + 1 - size_y % 2, (B, 1, 1), device=x.device, generator=generator) - size_y // 2
    left = torch.randint(0, W + 1 - size_x % 2, (B, 1, 1), device=x.device, generator=generator) - size_x // 2
    rows = torch.arange(H, device=x.device).view(1, H, 1)
    cols = torch.arange(W, device=x.device).view(1, 1, W)
    inside = (rows >= top) & (rows < top + size_y) & (cols >= left) & (cols < left + size_x)  # (B, H, W)
    return x * (~inside).unsqueeze(1).to(x.dtype)


POLICIES: dict[str, list[Callable[[Tensor, torch.Generator | None], Tensor]]] = {
    "color": [rand_brightness, rand_saturation, rand_contrast],
    "translation": [rand_translation],
    "cutout": [rand_cutout],
}


def diff_augment(x: Tensor, policy: Sequence[str] = (), generator: torch.Generator | None = None) -> Tensor:
    """x (B, C, H, W) -> the same shape and dtype, augmented by each named policy in order; () is identity."""
    unknown = [p for p in policy if p not in POLICIES]
    if unknown:
        raise ValueError(f"unknown augmentation policy {unknown}: choose from {', '.join(POLICIES)}")
    for name in policy:
        for fn in POLICIES[name]:
            x = fn(x, generator)
    return x


def maybe_augment(x: Tensor, prob: float, policy: Sequence[str],
                  generator: torch.Generator | None = None) -> Tensor:
    """The reference's wrapper around D, per call (reals and fakes draw separately): with probability
    ``prob``, flip the whole batch left-right with probability 1/2, then ``diff_augment``."""
    if prob <= 0 or torch.rand((), device=x.device, generator=generator) >= prob:
        return x
    if torch.rand((), device=x.device, generator=generator) < 0.5:
        x = x.flip(dims=(3,))
    return diff_augment(x, policy, generator)
