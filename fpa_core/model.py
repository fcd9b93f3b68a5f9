"""The Fast Weight Painter generator (Sec. 3.1 of the paper).

    (x_1..x_T) = InputGenerator(z)                       z (B, d_latent)
    (h_1..h_T) = SequenceProcessor(x_1..x_T)             an L-layer LSTM of width d_hidden
    [k_t, v_t, beta_t] = W_slow h_t                      UpdateNet, split per channel
    W_t^i = W_{t-1}^i + rule(phi(k_t^i), v_t^i, sigma(beta_t^i))   for each channel i, W_0 = 0
    image = tanh(W_T)                                    (B, c, d_value, d_key): height d_value, width d_key

Run ``python -m fpa_core.model --preset metfaces`` for a table of the parts.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fpa_core.model_config import ModelConfig
from fpa_core.config import ConfigError, check, from_dict, parse_overrides, to_dict
from fpa_core.presets import PRESETS, TABLE3_PARAMS_M
from fpa_core.rules import apply_rule


@dataclass
class Painting:
    """Everything one pass paints, for a batch of B latents."""

    image: Tensor  # (B, c, H, W), the output (after tanh if configured)
    updates: Tensor  # (B, T, c, H, W), the rank-1 term added at each step
    canvases: Tensor  # (B, T, c, H, W), W_t: the sum of the first t updates, before tanh
    keys: Tensor  # (B, T, c, W), phi(k_t)
    values: Tensor  # (B, T, c, H)
    lrs: Tensor  # (B, T, c), sigma(beta_t)
    refined: Tensor | None = None  # (B, c, H, W), a U-Net's refinement of ``image`` (fpa_core.unet), if any


class InputGenerator(nn.Module):
    """v1: x_t = z at every step. v2: Linear d_latent -> T*d_in, [tanh], split, Linear d_in -> d_in'."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.version, self.steps, self.d_in, self.use_tanh = cfg.input_generator, cfg.steps, cfg.d_in, cfg.input_tanh
        if self.version == "v2":
            self.expand = nn.Linear(cfg.d_latent, cfg.steps * cfg.d_in)
            self.proj = nn.Linear(cfg.d_in, cfg.d_in_proj)
            nn.init.kaiming_normal_(self.proj.weight, a=0, mode="fan_in", nonlinearity="leaky_relu")
            self.d_out = cfg.d_in_proj
        else:
            self.d_out = cfg.d_latent

    def forward(self, z: Tensor, steps: int) -> Tensor:
        if self.version == "v1":
            return z.unsqueeze(1).expand(-1, steps, -1)  # (B, T, d_latent)
        if steps != self.steps:
            raise ValueError(f"a v2 input generator paints exactly T = {self.steps} steps, not {steps}; "
                             "only v1 unrolls to any T")
        x = self.expand(z)  # (B, T * d_in)
        if self.use_tanh:
            x = torch.tanh(x)
        return self.proj(x.view(z.shape[0], steps, self.d_in))  # (B, T, d_in')

    def describe(self) -> str:
        if self.version == "v1":
            return f"v1: x_t = z (d_in = {self.d_out})"
        tanh = ", tanh" if self.use_tanh else ""
        return (f"v2: Linear {self.expand.in_features} -> {self.steps} x {self.d_in}{tanh}, "
                f"Linear {self.d_in} -> {self.d_out}")


class SequenceProcessor(nn.Module):
    """An L-layer LSTM; its initial (h, c) come from z through a Linear map, or are zeros."""

    def __init__(self, cfg: ModelConfig, d_input: int):
        super().__init__()
        self.num_layers, self.d_hidden = cfg.num_layers, cfg.d_hidden
        self.lstm = nn.LSTM(d_input, cfg.d_hidden, cfg.num_layers, batch_first=True)
        self.latent_to_init = nn.Linear(cfg.d_latent, 2 * cfg.num_layers * cfg.d_hidden) if cfg.latent_to_init else None
        if self.latent_to_init is not None and cfg.input_generator == "v1":  # as the authors' v1 painter
            nn.init.kaiming_normal_(self.latent_to_init.weight, a=0, mode="fan_in", nonlinearity="leaky_relu")

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        state = None
        if self.latent_to_init is not None:
            hc = self.latent_to_init(z).view(z.shape[0], 2, self.num_layers, self.d_hidden)  # (B, 2, L, H)
            hc = hc.permute(1, 2, 0, 3)  # (2, L, B, H)
            state = (hc[0].contiguous(), hc[1].contiguous())
        h, _ = self.lstm(x, state)  # (B, T, d_hidden)
        return h


class UpdateNet(nn.Module):
    """W_slow: d_hidden -> c * (d_key + d_value + 1), split into keys, values and learning rates."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.c, self.d_key, self.d_value = cfg.channels, cfg.width, cfg.height
        self.slow = nn.Linear(cfg.d_hidden, self.c * (self.d_key + self.d_value + 1))
        bound = 1.0 / math.sqrt(self.slow.out_features)  # as the authors' code: scaled by the output width
        nn.init.uniform_(self.slow.weight, -bound, bound)
        nn.init.uniform_(self.slow.bias, -bound, bound)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        B, T, _ = h.shape
        k, v, beta = self.slow(h).split([self.c * self.d_key, self.c * self.d_value, self.c], dim=-1)
        keys = F.softmax(k.view(B, T, self.c, self.d_key), dim=-1)  # (B, T, c, d_key)
        values = v.view(B, T, self.c, self.d_value)  # (B, T, c, d_value)
        lrs = torch.sigmoid(beta)  # (B, T, c)
        return keys, values, lrs


class FPAGenerator(nn.Module):
    """A GAN generator that paints an image as T rank-1 updates, one learning rule per step."""

    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        self.config = check(config or ModelConfig(), "model")
        self.input_generator = InputGenerator(self.config)
        self.sequence_processor = SequenceProcessor(self.config, self.input_generator.d_out)
        self.update_net = UpdateNet(self.config)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> FPAGenerator:
        """The Table 3 generator for a dataset: celeba, metfaces, afhq-cat, afhq-dog, afhq-wild, lsun-church."""
        return cls(preset_config(name, **overrides))

    def forward(self, z: Tensor, steps: int | None = None) -> Tensor:
        """z (B, d_latent) -> image (B, c, H, W). ``steps`` other than T works for v1 only."""
        return self.paint(z, steps, return_steps=False).image

    def paint(self, z: Tensor, steps: int | None = None, return_steps: bool = True) -> Painting:
        """The image and, in the same pass, every rank-1 update and cumulative canvas (Figure 5)."""
        cfg = self.config
        if z.dim() != 2 or z.shape[1] != cfg.d_latent:
            raise ValueError(f"expected latents of shape (B, {cfg.d_latent}), got {tuple(z.shape)}")
        steps = cfg.steps if steps is None else steps
        x = self.input_generator(z, steps)  # (B, T, d_in')
        # The LSTM, the update net and the rule run in float32, also under autocast (precision bf16):
        # cuDNN would run the LSTM in float16 without a gradient scaler, and the rule's keys, values and
        # learning rates would arrive rounded to bfloat16.
        with torch.autocast(z.device.type, enabled=False):
            h = self.sequence_processor(x.float(), z.float())  # (B, T, d_hidden)
            keys, values, lrs = self.update_net(h)  # (B, T, c, W), (B, T, c, H), (B, T, c)
        if cfg.first_step_lr == "one":  # W_1 = v_1 (x) k_1, as the authors' delta painters
            lrs = torch.cat([torch.ones_like(lrs[:, :1]), lrs[:, 1:]], dim=1)
        B, T, c = lrs.shape

        def per_channel(t: Tensor) -> Tensor:  # (B, T, c, ...) -> (B * c, T, ...)
            return t.transpose(1, 2).reshape(B * c, T, *t.shape[3:])

        out = apply_rule(cfg.rule, per_channel(keys), per_channel(values), per_channel(lrs),
                         parallel=cfg.parallel, return_steps=return_steps)
        weights, updates, canvases = out if return_steps else (out, None, None)
        image = weights.view(B, c, cfg.height, cfg.width)
        if cfg.output_tanh:
            image = torch.tanh(image)
        if return_steps:  # (B * c, T, H, W) -> (B, T, c, H, W)
            updates, canvases = (t.view(B, c, T, cfg.height, cfg.width).transpose(1, 2) for t in (updates, canvases))
        return Painting(image, updates, canvases, keys, values, lrs)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def summary(self, title: str = "FPA generator") -> str:
        """A table of the parts and their parameter counts."""
        cfg, seq = self.config, self.sequence_processor
        rows = [("input_generator", self.input_generator.describe(), _count(self.input_generator))]
        if seq.latent_to_init is not None:
            rows.append(("latent_to_init", f"Linear {cfg.d_latent} -> 2 x {cfg.num_layers} x {cfg.d_hidden}",
                         _count(seq.latent_to_init)))
        rows.append(("sequence_processor", f"LSTM {self.input_generator.d_out} -> {cfg.d_hidden}, "
                     f"{cfg.num_layers} layer{'s' * (cfg.num_layers > 1)}", _count(seq.lstm)))
        rows.append(("update_net", f"Linear {cfg.d_hidden} -> {cfg.channels} x ({cfg.width} + {cfg.height} + 1)",
                     _count(self.update_net)))
        total = self.num_parameters()
        width = max(len(r[1]) for r in rows)
        lines = [title, f"{'part':<20}{'layers':<{width + 2}}{'params':>13}"]
        lines += [f"{name:<20}{desc:<{width + 2}}{n:>13,}" for name, desc, n in rows]
        lines.append(f"{'total':<20}{'':<{width + 2}}{total:>13,}  ({total / 1e6:.1f} M)")
        tanh = ", output tanh" if cfg.output_tanh else ""
        form = "parallel form" if cfg.parallel else "loop form"
        lines.append(f"image {cfg.channels} x {cfg.height} x {cfg.width} (c x d_value x d_key), "
                     f"T = {cfg.steps}, rule {cfg.rule} ({form}){tanh}")
        return "\n".join(lines)


def preset_config(name: str, **overrides) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    return from_dict(ModelConfig, {**PRESETS[name], **overrides}, f"preset {name}")


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fpa_core.model",
                                     description="Print the parts and parameter count of an FPA generator.")
    parser.add_argument("--preset", default="celeba", choices=sorted(PRESETS),
                        help="a Table 3 configuration (default: celeba)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a model field, e.g. --set d_hidden=2048 --set rule=additive")
    args = parser.parse_args(argv)
    try:
        overrides = parse_overrides(args.overrides)
        config = from_dict(ModelConfig, {**PRESETS[args.preset], **overrides}, "model config")
    except ConfigError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    with torch.device("meta"):  # count without allocating (metfaces has 220 M parameters)
        generator = FPAGenerator(config)
    print(generator.summary(f"FPA generator, preset {args.preset}"))
    if not overrides:
        print(f"Table 3 (Gen. Param. Count): {TABLE3_PARAMS_M[args.preset]} M")
    print(f"config: {to_dict(config)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
