"""The LightGAN discriminator (Liu et al., 2021) as the paper trains FPAs against it (Sec. 3.3, App. B.3).

This follows lucidrains' lightweight-gan as modified by the authors' code (IDSIA/fpainter):

    x (B, c, S, S)
      -> [stem: strided convs down to 256x256, only for S >= 512]
      -> DownBlock x log2(min(S, 256) / 8)   each halves the size: a strided-conv branch plus an
                                             avg-pool branch, after linear attention where the block's
                                             input width is in attn_res_layers
      -> feats (B, C, 8, 8) -> LogitsHead -> logits (B, 1), or (B, 25) with disc_output_size 5
    x resized to 32x32 -> SmallImageHead -> logits_small (B, 1)
    aux: SimpleDecoder(feats 8x8) vs x resized to recon_size (128x128)            (mean squared error)
         SimpleDecoder(a random quadrant of the 16x16 feats) vs that quadrant of x   (S >= 512 only)

Every resize is F.interpolate's default (nearest), as in the reference. The reconstruction targets
are the input image itself, resized: an FPA has no intermediate low-resolution outputs to compare
against (App. B.3). Only the reals' aux loss is ever used. The blur before each down-sampling is
the reference's ``antialias`` option, off by default there and here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fpa_core.config import check
from fpa_core.model_config import DiscriminatorConfig, is_power_of_two
from fpa_core.window_attention import window_attention


@dataclass
class DiscOutput:
    logits: Tensor  # (B, 1), or (B, 25) with disc_output_size 5; high means "real"
    logits_small: Tensor  # (B, 1), from the 32x32 copy of the input
    aux_loss: Tensor | None = None  # scalar reconstruction loss, only when asked for (aux=True)


class Blur(nn.Module):
    """A normalised [1, 2, 1] x [1, 2, 1] filter per channel (a depthwise conv), reflect-padded."""

    def __init__(self):
        super().__init__()
        f = torch.tensor([1.0, 2.0, 1.0])
        kernel = f[:, None] * f[None, :]
        self.register_buffer("kernel", (kernel / kernel.sum())[None, None], persistent=False)  # (1, 1, 3, 3)

    def forward(self, x: Tensor) -> Tensor:
        C = x.shape[1]
        x = F.pad(x, (1, 1, 1, 1), mode="reflect")
        return F.conv2d(x, self.kernel.expand(C, 1, 3, 3).to(x.dtype), groups=C)


def blur(antialias: bool) -> nn.Module:
    return Blur() if antialias else nn.Identity()


class ChanNorm(nn.Module):
    """Layer norm over the channels of every pixel, with a learned gain and bias."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.g = nn.Parameter(torch.ones(1, dim, 1, 1))
        self.b = nn.Parameter(torch.zeros(1, dim, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        var, mean = torch.var_mean(x, dim=1, unbiased=False, keepdim=True)
        return (x - mean) / (var + self.eps).sqrt() * self.g + self.b


class LinearAttention(nn.Module):
    """Two attentions over a feature map, concatenated: a global linear one and a full one over 3x3 windows.

    Linear: softmax(q) over its features, softmax(k) over the positions, out = q (k^T v), then GELU;
    its keys and values come from a depthwise-separable 3x3 conv. Local: every position attends to
    its 3x3 neighbourhood (zero-padded at the border: a key outside the map is a zero vector, whose
    similarity 0 still takes part in the softmax, as with F.unfold in the reference), keys and values
    from a 1x1 conv.

    The local half runs in fpa_core.window_attention, which computes the reference's F.unfold sums
    without materialising the neighbourhoods (``tests/test_discriminator.py`` checks this module against
    the unfold form). Shapes below: B batch, h heads, d = dim_head, H x W the map.
    """

    def __init__(self, dim: int, dim_head: int = 64, heads: int = 8):
        super().__init__()
        self.heads, self.dim_head, self.scale = heads, dim_head, dim_head ** -0.5
        inner = heads * dim_head
        self.to_lin_q = nn.Conv2d(dim, inner, 1, bias=False)
        self.to_lin_kv = nn.Sequential(  # depthwise 3x3, then pointwise
            nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False),
            nn.Conv2d(dim, 2 * inner, 1, bias=False),
        )
        self.to_q = nn.Conv2d(dim, inner, 1, bias=False)
        self.to_kv = nn.Conv2d(dim, 2 * inner, 1, bias=False)
        self.to_out = nn.Conv2d(2 * inner, dim, 1)

    def heads_of(self, t: Tensor) -> Tensor:  # (B, h * d, H, W) -> (B * h, d, H, W)
        B, _, H, W = t.shape
        return t.reshape(B * self.heads, self.dim_head, H, W)

    def forward(self, x: Tensor) -> Tensor:
        B, _, H, W = x.shape
        # global linear attention, in (B * h, d, N) layout
        q = self.heads_of(self.to_lin_q(x)).flatten(2).softmax(dim=1) * self.scale  # (B * h, d, N)
        k, v = (self.heads_of(t).flatten(2) for t in self.to_lin_kv(x).chunk(2, dim=1))  # (B * h, d, N)
        context = k.softmax(dim=-1) @ v.transpose(1, 2)  # (B * h, d_k, d_v)
        lin_out = F.gelu((context.transpose(1, 2) @ q).reshape(B, -1, H, W))  # (B, h * d, H, W)

        # full attention within each 3x3 window (fpa_core.window_attention)
        q = self.heads_of(self.to_q(x)) * self.scale  # (B * h, d, H, W)
        k, v = (self.heads_of(t) for t in self.to_kv(x).chunk(2, dim=1))  # (B * h, d, H, W)
        local_out = window_attention(q, k, v).reshape(B, -1, H, W)  # (B, h * d, H, W)

        return self.to_out(torch.cat([lin_out, local_out], dim=1))


class Attention(nn.Module):
    """x + LinearAttention(ChanNorm(x))."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = ChanNorm(dim)
        self.attn = LinearAttention(dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x.contiguous()  # heads are channel slices: a channels-last map would be copied for each one
        return x + self.attn(self.norm(x))


class DownBlock(nn.Module):
    """Halves the size: [x + attention(x)], then a strided-conv branch plus an average-pool branch."""

    def __init__(self, chan_in: int, chan_out: int, attention: bool = False, antialias: bool = False):
        super().__init__()
        self.attn = Attention(chan_in) if attention else None
        self.conv = nn.Sequential(
            blur(antialias),
            nn.Conv2d(chan_in, chan_out, 4, stride=2, padding=1),
            nn.LeakyReLU(0.1),
            nn.Conv2d(chan_out, chan_out, 3, padding=1),
            nn.LeakyReLU(0.1),
        )
        self.pool = nn.Sequential(
            blur(antialias),
            nn.AvgPool2d(2),
            nn.Conv2d(chan_in, chan_out, 1),
            nn.LeakyReLU(0.1),
        )

    def forward(self, x: Tensor) -> Tensor:  # (B, C_in, H, W) -> (B, C_out, H / 2, W / 2)
        if self.attn is not None:
            x = self.attn(x)
        return self.conv(x) + self.pool(x)


class LogitsHead(nn.Module):
    """(B, C, 8, 8) -> (B, 1, 1, 1) via a strided 3x3 conv, or -> (B, 1, 5, 5) via a 1x1 conv."""

    def __init__(self, chan: int, output_size: int, antialias: bool = False):
        super().__init__()
        if output_size == 1:
            first = [blur(antialias), nn.Conv2d(chan, chan, 3, stride=2, padding=1)]
        else:
            first = [nn.Conv2d(chan, chan, 1)]
        self.net = nn.Sequential(*first, nn.LeakyReLU(0.1), nn.Conv2d(chan, 1, 4))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class SmallImageHead(nn.Module):
    """The second logit, from an S x S copy of the input (S = 32, the reference's): conv, attention, one
    DownBlock, attention, pool."""

    def __init__(self, channels: int, antialias: bool = False, attention: bool = True, size: int = 32):
        super().__init__()
        self.size = size
        self.net = nn.Sequential(
            nn.Conv2d(channels, 64, 3, padding=1),  # (B, 64, S, S)
            Attention(64) if attention else nn.Identity(),
            DownBlock(64, 32, antialias=antialias),  # (B, 32, S / 2, S / 2)
            Attention(32) if attention else nn.Identity(),
            nn.AdaptiveAvgPool2d(4),  # (B, 32, 4, 4)
            nn.Conv2d(32, 1, 4),  # (B, 1, 1, 1)
        )

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size))
        return self.net(x)


class SimpleDecoder(nn.Module):
    """(B, C, 8, 8) -> (B, channels, 8 * 2^n, ...): n x2 nearest upsamplings (4: 128x128, the reference's),
    each a 3x3 conv and a GLU."""

    def __init__(self, chan_in: int, channels: int, num_upsamples: int = 4):
        super().__init__()
        layers = []
        chans = chan_in
        for i in range(num_upsamples):
            chan_out = 2 * channels if i == num_upsamples - 1 else chans  # the GLU halves it
            layers += [nn.Upsample(scale_factor=2), nn.Conv2d(chans, chan_out, 3, padding=1), nn.GLU(dim=1)]
            chans //= 2
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Discriminator(nn.Module):
    """The LightGAN discriminator for square images of any power-of-two size >= 16."""

    def __init__(self, config: DiscriminatorConfig | None = None, image_size: int = 64, channels: int = 3):
        super().__init__()
        self.config = cfg = check(config or DiscriminatorConfig(), "discriminator")
        if not (isinstance(image_size, int) and is_power_of_two(image_size) and image_size >= 16):
            raise ValueError(f"the discriminator takes square images whose size is a power of two >= 16 "
                             f"(16, 32, 64, 128, ...), got image_size={image_size!r}")
        if channels < 1:
            raise ValueError(f"channels must be a positive integer, got {channels}")
        self.image_size, self.channels = image_size, channels
        log_size = image_size.bit_length() - 1

        # Above 256x256, strided convs without residual branches bring the image down to 256x256.
        num_stem = max(0, log_size - 8)
        log_sizes = list(range(min(8, log_size), 2, -1))  # the size entering each DownBlock, and the last 8x8
        widths = [min(2 ** (cfg.fmap_inverse_coef - r), cfg.fmap_max) for r in log_sizes]
        if num_stem == 0:
            widths[0] = channels
        stem = []
        for i in range(num_stem):
            chan_out = widths[0] if i == num_stem - 1 else channels
            stem += [blur(cfg.antialias), nn.Conv2d(channels, chan_out, 4, stride=2, padding=1), nn.LeakyReLU(0.1)]
        self.stem = nn.Sequential(*stem)
        self.blocks = nn.ModuleList(
            DownBlock(c_in, c_out, attention=2 ** r in cfg.attn_res_layers, antialias=cfg.antialias)
            for r, c_in, c_out in zip(log_sizes, widths[:-1], widths[1:])
        )
        self.to_logits = LogitsHead(widths[-1], cfg.disc_output_size, cfg.antialias)
        self.to_logits_small = SmallImageHead(channels, cfg.antialias, cfg.small_head_attention, cfg.small_size)
        upsamples = cfg.recon_size.bit_length() - 4  # 8 x 2^upsamples = recon_size
        self.decoder_8x8 = SimpleDecoder(widths[-1], channels, upsamples)
        self.decoder_16x16 = SimpleDecoder(widths[-2], channels, upsamples) if log_size >= 9 else None
        self.apply(_init_weights)
        self.memory_format = torch.contiguous_format

    def to_channels_last(self) -> Discriminator:
        """Store the convolutions' maps channels-last (what oneDNN's CPU kernels prefer), except inside the
        attention blocks, whose heads are channel slices; the same function, about 1.4x faster on a CPU."""
        self.to(memory_format=torch.channels_last)
        for module in self.modules():
            if isinstance(module, Attention):
                module.to(memory_format=torch.contiguous_format)
        self.memory_format = torch.channels_last
        return self

    def forward(self, x: Tensor, aux: bool = False, generator: torch.Generator | None = None) -> DiscOutput:
        """x (B, c, S, S) -> DiscOutput. With aux=True, also the reconstruction loss of x (pass reals only).

        ``generator`` (a torch.Generator; default: torch's global CPU RNG) draws the quadrant that
        the 16x16 decoder reconstructs; only images of 512x512 and above have that decoder.
        """
        x, logits, logits_small, feats = self._judge(x)
        aux_loss = self.reconstruction_loss(x, feats, generator) if aux else None
        return DiscOutput(logits, logits_small, aux_loss)

    def judge(self, fakes: Tensor, reals: Tensor, generator: torch.Generator | None = None
              ) -> tuple[DiscOutput, DiscOutput]:
        """D(fakes) and D(reals, aux=True) in one batch: D looks at every image on its own (no batch
        statistics), so this is the same function with half as many, twice as large, kernel calls."""
        n = len(fakes)
        x, logits, logits_small, feats = self._judge(torch.cat([fakes, reals]))
        aux_loss = self.reconstruction_loss(x[n:], [f[n:] for f in feats], generator)
        return (DiscOutput(logits[:n], logits_small[:n]),
                DiscOutput(logits[n:], logits_small[n:], aux_loss))

    def _judge(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
        S = self.image_size
        if x.dim() != 4 or tuple(x.shape[1:]) != (self.channels, S, S):
            raise ValueError(f"expected images of shape (B, {self.channels}, {S}, {S}), got {tuple(x.shape)}")
        x = x.contiguous(memory_format=self.memory_format)
        feats = []
        h = self.stem(x)
        for block in self.blocks:
            h = block(h)
            feats.append(h)  # ..., (B, C, 16, 16), (B, C, 8, 8)
        logits = self.to_logits(h).flatten(1)  # (B, 1) or (B, 25)
        logits_small = self.to_logits_small(x).flatten(1)  # (B, 1)
        return x, logits, logits_small, feats

    def reconstruction_loss(self, x: Tensor, feats: list[Tensor], generator: torch.Generator | None) -> Tensor:
        recon = self.decoder_8x8(feats[-1])  # (B, c, recon_size, recon_size)
        loss = F.mse_loss(recon, F.interpolate(x, size=recon.shape[-2:]))
        if self.decoder_16x16 is not None:
            device = generator.device if generator is not None else "cpu"
            q = int(torch.randint(4, (), generator=generator, device=device))  # one quadrant for the whole batch
            img_part, feat_part = (_quadrant(t, q) for t in (x, feats[-2]))  # (B, c, S/2, S/2), (B, C, 8, 8)
            recon = self.decoder_16x16(feat_part)
            loss = loss + F.mse_loss(recon, F.interpolate(img_part, size=recon.shape[-2:]))
        return loss

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _quadrant(t: Tensor, q: int) -> Tensor:
    """Quadrant q of a (B, C, H, W) map: 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right."""
    H, W = t.shape[-2] // 2, t.shape[-1] // 2
    row, col = divmod(q, 2)
    return t[..., row * H:(row + 1) * H, col * W:(col + 1) * W]


def _init_weights(m: nn.Module) -> None:
    """As the reference: Kaiming-normal weights for every conv (biases keep PyTorch's default)."""
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in", nonlinearity="leaky_relu")
