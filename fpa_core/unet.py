"""The optional U-Net refinement of an FPA's output (Sec. 3.2, Eq. 10; Appendix C.1): W' = UNet(W_T).

The U-Net follows lucidrains' denoising-diffusion-pytorch (which the authors used) without its time
embedding: ResNet blocks of (GroupNorm, SiLU, 3x3 conv) x 2, three down-sampling levels whose outputs
skip across to three up-sampling levels, two ResNet blocks in the middle. It maps an image to an
image of the same size. With the defaults (dim 64, mults 1-2-3) it has 8.46 M parameters at any
resolution that three halvings divide (the paper: "about 8 M", at 64x64).

``RefinedGenerator`` appends a U-Net to a *frozen* FPA (the paper's main setting: only the U-Net
learns; end-to-end training made the U-Net ignore the FPA, Appendix C.1).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from fpa_core.config import check
from fpa_core.model import FPAGenerator, Painting


@dataclass
class UNetConfig:
    dim: int = 64  # channels of the first level
    dim_mults: list[int] = field(default_factory=lambda: [1, 2, 3])  # one entry per down-sampling level
    blocks: int = 2  # ResNet blocks per level
    groups: int = 8  # GroupNorm groups; every level's width must divide by it
    channels: int = 3  # image channels in and out

    def validate(self) -> list[str]:
        errors = [f"{n}: must be a positive integer, got {getattr(self, n)}"
                  for n in ("dim", "blocks", "groups", "channels") if getattr(self, n) < 1]
        if not self.dim_mults or any(m < 1 for m in self.dim_mults):
            errors.append(f"dim_mults: a non-empty list of positive integers, got {self.dim_mults}")
        elif self.groups >= 1 and any(self.dim * m % self.groups for m in self.dim_mults):
            errors.append(f"groups: {self.groups} must divide every level's width "
                          f"{[self.dim * m for m in self.dim_mults]}")
        return errors

    def check_resolution(self, height: int, width: int) -> list[str]:
        factor = 2 ** len(self.dim_mults)
        if height % factor or width % factor:
            return [f"dim_mults: {len(self.dim_mults)} down-sampling levels need an image size divisible by "
                    f"{factor}, got {height}x{width}"]
        return []


class ResnetBlock(nn.Module):
    def __init__(self, dim_in: int, dim_out: int, groups: int):
        super().__init__()
        self.block1 = nn.Sequential(nn.GroupNorm(groups, dim_in), nn.SiLU(), nn.Conv2d(dim_in, dim_out, 3, padding=1))
        self.block2 = nn.Sequential(nn.GroupNorm(groups, dim_out), nn.SiLU(), nn.Conv2d(dim_out, dim_out, 3, padding=1))
        self.skip = nn.Conv2d(dim_in, dim_out, 1) if dim_in != dim_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, dim_in, H, W) -> (B, dim_out, H, W)
        return self.block2(self.block1(x)) + self.skip(x)


class UNet(nn.Module):
    def __init__(self, config: UNetConfig):
        super().__init__()
        check(config, "unet")
        self.config = config
        dims = [config.dim * m for m in config.dim_mults]  # the width of each level
        self.init_conv = nn.Conv2d(config.channels, dims[0], 7, padding=3)
        self.down, self.up = nn.ModuleList(), nn.ModuleList()
        for i, dim in enumerate(dims):
            dim_next = dims[min(i + 1, len(dims) - 1)]
            self.down.append(nn.ModuleList([
                nn.ModuleList(ResnetBlock(dim, dim, config.groups) for _ in range(config.blocks)),
                nn.Conv2d(dim, dim_next, 4, stride=2, padding=1),  # halves H and W
            ]))
        self.mid = nn.Sequential(*(ResnetBlock(dims[-1], dims[-1], config.groups) for _ in range(2)))
        for i in reversed(range(len(dims))):
            dim, dim_below = dims[i], dims[min(i + 1, len(dims) - 1)]
            self.up.append(nn.ModuleList([
                nn.ConvTranspose2d(dim_below, dim, 4, stride=2, padding=1),  # doubles H and W
                nn.ModuleList(ResnetBlock(2 * dim if j == 0 else dim, dim, config.groups)  # + the skip
                              for j in range(config.blocks)),
            ]))
        self.final = nn.Sequential(ResnetBlock(2 * dims[0], dims[0], config.groups),
                                   nn.Conv2d(dims[0], config.channels, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, H, W)
        x = self.init_conv(image)
        first, skips = x, []
        for blocks, downsample in self.down:
            for block in blocks:
                x = block(x)
            skips.append(x)  # (B, dim_i, H / 2^i, W / 2^i)
            x = downsample(x)
        x = self.mid(x)  # (B, dim_L, H / 2^L, W / 2^L)
        for upsample, blocks in self.up:
            x = upsample(x)
            x = torch.cat([x, skips.pop()], dim=1)
            for block in blocks:
                x = block(x)
        return self.final(torch.cat([x, first], dim=1))


def fpa_of(state: dict) -> dict:
    """The frozen FPA inside a U-Net stage's checkpoint, as a checkpoint of its own (EMA weights, the
    model config, the FID it had as the stage's base)."""
    config = {**state["config"], "stage": "fpa", "base_generator": ""}
    weights = {k[len("fpa."):]: v for k, v in state["generator_ema"].items() if k.startswith("fpa.")}
    base = state.get("base") or {}
    step = base.get("step", state["step"])
    scores = {k: base[k] for k in ("fid", "kid") if base.get(k) is not None}
    return {"format_version": state["format_version"], "step": step, "config": config, "generator_ema": weights,
            "dataset": state["dataset"], "evaluations": [{"step": step, **scores}] if scores else [],
            **{k: base.get(k, state.get(k)) for k in ("fid_calibrated", "fid_backbone", "fid_weights")}}


class RefinedGenerator(nn.Module):
    """A frozen FPA followed by a U-Net: ``G(z) = UNet(FPA(z))``. Only the U-Net has trainable parameters."""

    def __init__(self, fpa: FPAGenerator, unet: UNet):
        super().__init__()
        self.fpa, self.unet = fpa.requires_grad_(False), unet
        self.config = fpa.config  # d_latent, sizes: what callers of a generator read

    def train(self, mode: bool = True) -> RefinedGenerator:
        super().train(mode)
        self.fpa.eval()  # frozen: no dropout or batch statistics change in it
        return self

    def forward(self, z: torch.Tensor, steps: int | None = None) -> torch.Tensor:  # (B, d_latent) -> (B, C, H, W)
        with torch.no_grad():
            painted = self.fpa(z, steps=steps)
        return self.unet(painted)

    def paint(self, z: torch.Tensor, steps: int | None = None) -> Painting:
        """The FPA's painting, with the U-Net's refined image as one more canvas (Figure 3)."""
        painting = self.fpa.paint(z, steps=steps)
        return dataclasses.replace(painting, refined=self.unet(painting.image))
