"""The networks' fields, without torch: the painter (Sec. 3.1), the discriminator and the U-Net.

These are sections of a training config (``fpa_core.train.config``), checked before anything loads
torch: a sweep's search space is validated against them in a command that has not imported it yet.
The networks themselves are in ``fpa_core.model``, ``fpa_core.discriminator`` and ``fpa_core.unet``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class ModelConfig:
    """Every knob of Sec. 3.1 and Appendix B.2. Defaults are the CelebA row of Table 3."""

    input_generator: Literal["v1", "v2"] = "v2"
    input_tanh: bool = False  # v2: tanh on the input generator's output
    latent_to_init: bool = False  # a Linear map z -> initial (h, c) of every LSTM layer; else zeros
    d_latent: int = 128
    d_in: int = 8  # v2 only: per-step input width (v1 feeds z itself, d_in = d_latent)
    d_in_proj: int = 128  # v2 only: d_in' of the paper, the Linear d_in -> d_in' shared over time
    d_hidden: int = 1024
    num_layers: int = 2
    channels: int = 3
    height: int = 64  # d_value
    width: int = 64  # d_key
    steps: int = 64  # T, the number of painting steps
    rule: Literal["delta", "additive", "oja", "oja-softmax"] = "delta"  # fpa_core.rules
    output_tanh: bool = True
    parallel: bool = True  # the triangular-solve form of the rule; False runs the reference loop
    # The first step's learning rate: sigmoid(beta_1), as Eq. 9, or one, as the authors' code does for the
    # delta rule (W_1 = v_1 (x) k_1; their Oja painter keeps sigmoid(beta_1))
    first_step_lr: Literal["sigmoid", "one"] = "sigmoid"

    def validate(self) -> list[str]:
        errors = []
        for name in ("d_latent", "d_in", "d_in_proj", "d_hidden", "num_layers", "channels", "height", "width", "steps"):
            if getattr(self, name) < 1:
                errors.append(f"{name}: must be a positive integer, got {getattr(self, name)}")
        return errors


@dataclass
class DiscriminatorConfig:
    """The reference's discriminator knobs, with the values its main.py passes (not painter.py's defaults).

    At 64x64 with 3 channels these give 12,326,632 parameters, the 12.1-12.7 M that Table 3's
    "Total" minus "Gen." rows imply (fpainter's painter.py defaults, disc_output_size 5 and no
    attention, would give 9.7 M).
    """

    fmap_max: int = 512  # the widest feature map
    fmap_inverse_coef: int = 12  # a block entering a 2^r x 2^r map has min(2^(coef - r), fmap_max) channels
    disc_output_size: int = 1  # 1: one logit per image; 5: a 5x5 map of logits
    attn_res_layers: list[int] = field(default_factory=lambda: [32])  # input widths that get linear attention
    antialias: bool = False  # blur before every down-sampling; the reference's default leaves it off
    small_head_attention: bool = True  # the 32x32 head's two attention blocks; costly on a CPU
    recon_size: int = 128  # the reals' reconstruction from the 8x8 features: the reference's 128x128 at any size
    small_size: int = 32  # the second head looks at the image resized to this: the reference's 32x32 at any size

    def validate(self) -> list[str]:
        errors = []  # every width a whole number, and the decoders' inputs (halved three times) >= 8
        if not (is_power_of_two(self.fmap_max) and self.fmap_max >= 8):
            errors.append(f"fmap_max: must be a power of two >= 8, got {self.fmap_max}")
        if self.fmap_inverse_coef < 8:
            errors.append(f"fmap_inverse_coef: must be at least 8, got {self.fmap_inverse_coef}")
        if self.disc_output_size not in (1, 5):
            errors.append(f"disc_output_size: must be 1 or 5, got {self.disc_output_size}")
        for width in self.attn_res_layers:
            if not is_power_of_two(width):
                errors.append(f"attn_res_layers: every entry must be a power of two, got {width}")
        for name in ("recon_size", "small_size"):
            if not (is_power_of_two(getattr(self, name)) and getattr(self, name) >= 16):
                errors.append(f"{name}: must be a power of two >= 16, got {getattr(self, name)}")
        return errors


def is_power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


@dataclass
class UNetConfig:
    arch: Literal["reference", "resnet"] = "reference"  # the authors' U-Net, or this project's earlier one
    dim: int = 64  # channels of the first level
    dim_mults: list[int] = field(default_factory=lambda: [1, 2, 4])  # one entry per level
    blocks: int = 2  # ResNet blocks per level
    groups: int = 8  # GroupNorm groups; every level's width must divide by it
    heads: int = 4  # reference: attention heads of dim_head channels each
    dim_head: int = 32
    output_tanh: bool = True  # reference: tanh on the U-Net's output, as the code's --unet_tanh
    channels: int = 3  # image channels in and out

    def validate(self) -> list[str]:
        errors = [f"{n}: must be a positive integer, got {getattr(self, n)}"
                  for n in ("dim", "blocks", "groups", "heads", "dim_head", "channels") if getattr(self, n) < 1]
        if not self.dim_mults or any(m < 1 for m in self.dim_mults):
            errors.append(f"dim_mults: a non-empty list of positive integers, got {self.dim_mults}")
        elif self.groups >= 1 and any(self.dim * m % self.groups for m in [1, *self.dim_mults]):
            errors.append(f"groups: {self.groups} must divide every level's width "
                          f"{[self.dim * m for m in self.dim_mults]} and dim {self.dim}")
        if self.arch == "resnet" and self.output_tanh:
            errors.append("output_tanh: the resnet U-Net has no final tanh; set output_tanh: false "
                          "(or arch: reference)")
        return errors

    @property
    def halvings(self) -> int:
        """Down-samplings: one per level but the last (reference), one per level (resnet)."""
        return len(self.dim_mults) - 1 if self.arch == "reference" else len(self.dim_mults)

    def check_resolution(self, height: int, width: int) -> list[str]:
        factor = 2 ** self.halvings
        if height % factor or width % factor:
            return [f"dim_mults: {self.halvings} down-samplings need an image size divisible by "
                    f"{factor}, got {height}x{width}"]
        return []
