"""The optional U-Net refinement of an FPA's output (Sec. 3.2, Eq. 10; Appendix C.1): W' = UNet(W_T).

``arch: reference`` (the default) is the authors' U-Net (IDSIA/fpainter, after lucidrains'
denoising-diffusion-pytorch, without its time embedding): a 7x7 stem, then per level ResNet blocks of
(3x3 conv, GroupNorm, SiLU) x 2 and a linear attention, each level's output skipping across to the up path;
two down-samplings for three levels (the last level keeps its size), full attention in the middle, and the
stem's output concatenated before the last block. With dim 64 and mults 1-2-4 it has 7,985,475 parameters
at 3 channels (Appendix C.1: "about 8 M"). Its output goes through a tanh (``output_tanh``), as the code's
``tanh(UNet(tanh W_T))``.

``arch: resnet`` is this project's earlier U-Net: pre-activation ResNet blocks, a down-sampling per level,
no attention, no final tanh (8.46 M parameters with dim 64, mults 1-2-3). Checkpoints written before
``arch`` existed load as ``resnet``.

``RefinedGenerator`` appends a U-Net to a *frozen* FPA (the paper's main setting: only the U-Net
learns; end-to-end training made the U-Net ignore the FPA, Appendix C.1).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn

from fpa_core.config import check
from fpa_core.model import FPAGenerator, Painting
from fpa_core.model_config import UNetConfig


def build_unet(config: UNetConfig) -> nn.Module:
    """The U-Net that ``config.arch`` names."""
    return ReferenceUNet(config) if config.arch == "reference" else ResnetUNet(config)


# -- arch: reference ---------------------------------------------------------------------------------------

class ConvBlock(nn.Module):
    """3x3 conv -> GroupNorm -> SiLU."""

    def __init__(self, dim_in: int, dim_out: int, groups: int):
        super().__init__()
        self.conv, self.norm = nn.Conv2d(dim_in, dim_out, 3, padding=1), nn.GroupNorm(groups, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, dim_in, H, W) -> (B, dim_out, H, W)
        return nn.functional.silu(self.norm(self.conv(x)))


class ConvResnetBlock(nn.Module):
    def __init__(self, dim_in: int, dim_out: int, groups: int):
        super().__init__()
        self.block1, self.block2 = ConvBlock(dim_in, dim_out, groups), ConvBlock(dim_out, dim_out, groups)
        self.skip = nn.Conv2d(dim_in, dim_out, 1) if dim_in != dim_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, dim_in, H, W) -> (B, dim_out, H, W)
        return self.block2(self.block1(x)) + self.skip(x)


class ChannelNorm(nn.Module):
    """LayerNorm over the channels of each pixel, with a gain and a bias per channel."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.g, self.b = nn.Parameter(torch.ones(1, dim, 1, 1)), nn.Parameter(torch.zeros(1, dim, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        var, mean = torch.var_mean(x, dim=1, unbiased=False, keepdim=True)
        return (x - mean) / (var + self.eps).sqrt() * self.g + self.b


class LinearAttention(nn.Module):
    """x + out(attention(norm(x))) with linear attention over the H W pixels: queries softmaxed over their
    features, keys over the pixels, context = K^T V per head."""

    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads, self.dim_head, self.scale = heads, dim_head, dim_head ** -0.5
        self.norm = ChannelNorm(dim)
        self.to_qkv = nn.Conv2d(dim, 3 * heads * dim_head, 1, bias=False)
        self.to_out = nn.Sequential(nn.Conv2d(heads * dim_head, dim, 1), ChannelNorm(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, H, W)
        B, _, H, W = x.shape
        q, k, v = self.to_qkv(self.norm(x)).view(B, 3, self.heads, self.dim_head, H * W).unbind(1)  # (B, h, d, n)
        q = q.softmax(dim=-2) * self.scale
        k = k.softmax(dim=-1)
        context = torch.einsum("bhdn,bhen->bhde", k, v)  # (B, h, d, d)
        out = torch.einsum("bhde,bhdn->bhen", context, q)  # (B, h, d, n)
        return x + self.to_out(out.reshape(B, self.heads * self.dim_head, H, W))


class FullAttention(nn.Module):
    """x + out(softmax attention(norm(x))) over the H W pixels."""

    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads, self.dim_head, self.scale = heads, dim_head, dim_head ** -0.5
        self.norm = ChannelNorm(dim)
        self.to_qkv = nn.Conv2d(dim, 3 * heads * dim_head, 1, bias=False)
        self.to_out = nn.Conv2d(heads * dim_head, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, H, W)
        B, _, H, W = x.shape
        q, k, v = self.to_qkv(self.norm(x)).view(B, 3, self.heads, self.dim_head, H * W).unbind(1)  # (B, h, d, n)
        attention = torch.einsum("bhdi,bhdj->bhij", q * self.scale, k).softmax(dim=-1)  # (B, h, n, n)
        out = torch.einsum("bhij,bhdj->bhdi", attention, v)  # (B, h, d, n)
        return x + self.to_out(out.reshape(B, self.heads * self.dim_head, H, W))


class ReferenceUNet(nn.Module):
    def __init__(self, config: UNetConfig):
        super().__init__()
        check(config, "unet")
        self.config = c = config
        dims = [c.dim * m for m in c.dim_mults]  # the width of each level
        ins = [c.dim, *dims[:-1]]  # what each level takes in

        def blocks(dim_in: int, dim_out: int) -> nn.ModuleList:
            return nn.ModuleList(ConvResnetBlock(dim_in if j == 0 else dim_out, dim_out, c.groups)
                                 for j in range(c.blocks))

        self.init_conv = nn.Conv2d(c.channels, c.dim, 7, padding=3)
        self.down = nn.ModuleList()
        for i, (dim_in, dim) in enumerate(zip(ins, dims)):
            last = i == len(dims) - 1
            self.down.append(nn.ModuleList([
                blocks(dim_in, dim), LinearAttention(dim, c.heads, c.dim_head),
                nn.Identity() if last else nn.Conv2d(dim, dim, 4, stride=2, padding=1),  # halves H and W
            ]))
        self.mid = nn.Sequential(ConvResnetBlock(dims[-1], dims[-1], c.groups),
                                 FullAttention(dims[-1], c.heads, c.dim_head),
                                 ConvResnetBlock(dims[-1], dims[-1], c.groups))
        self.up = nn.ModuleList()
        width = dims[-1]  # what comes up from below
        for i in reversed(range(len(dims))):
            dim_out = ins[i]
            self.up.append(nn.ModuleList([
                blocks(width + dims[i], dim_out), LinearAttention(dim_out, c.heads, c.dim_head),  # + the skip
                nn.Identity() if i == 0 else nn.ConvTranspose2d(dim_out, dim_out, 4, stride=2, padding=1),
            ]))
            width = dim_out
        self.final = nn.Sequential(ConvResnetBlock(2 * c.dim, c.dim, c.groups), nn.Conv2d(c.dim, c.channels, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, H, W)
        x = first = self.init_conv(image)  # (B, dim, H, W)
        skips = []
        for level, attention, downsample in self.down:
            for block in level:
                x = block(x)
            x = attention(x)
            skips.append(x)  # (B, dim_i, H / 2^i, W / 2^i)
            x = downsample(x)
        x = self.mid(x)
        for level, attention, upsample in self.up:
            x = torch.cat([x, skips.pop()], dim=1)
            for block in level:
                x = block(x)
            x = upsample(attention(x))
        out = self.final(torch.cat([x, first], dim=1))
        return torch.tanh(out) if self.config.output_tanh else out


# -- arch: resnet ------------------------------------------------------------------------------------------

class ResnetBlock(nn.Module):
    def __init__(self, dim_in: int, dim_out: int, groups: int):
        super().__init__()
        self.block1 = nn.Sequential(nn.GroupNorm(groups, dim_in), nn.SiLU(), nn.Conv2d(dim_in, dim_out, 3, padding=1))
        self.block2 = nn.Sequential(nn.GroupNorm(groups, dim_out), nn.SiLU(), nn.Conv2d(dim_out, dim_out, 3, padding=1))
        self.skip = nn.Conv2d(dim_in, dim_out, 1) if dim_in != dim_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, dim_in, H, W) -> (B, dim_out, H, W)
        return self.block2(self.block1(x)) + self.skip(x)


class ResnetUNet(nn.Module):
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

    def __init__(self, fpa: FPAGenerator, unet: nn.Module):
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
