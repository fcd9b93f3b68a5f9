"""The FID Inception network: pytorch-fid's InceptionV3 pipeline, without its download.

    images (B, 3, H, W) in [0, 1]
      -> bilinear resize to 299 x 299 (align_corners=False)   pytorch-fid's resize_input
      -> 2 x - 1                                              its normalize_input: the range TF's graph expects
      -> blocks 0..b of the trunk                             b by the feature size: 64, 192, 768 or 2048
      -> average over space -> features (B, dims)

The trunk is pytorch_fid.inception.fid_inception_v3's architecture (torchvision's Inception3 with the FID
variants of the mixed blocks). Its weights come from fpa_core.metrics.weights: the calibrated FID
Inception (TensorFlow's 2015-12-05 graph, the network behind pytorch-fid's and StyleGAN's FIDs), or a
fixed random initialisation whose numbers are uncalibrated.
"""

from __future__ import annotations

import pytorch_fid.inception as pf
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

DIMS = tuple(pf.InceptionV3.BLOCK_INDEX_BY_DIM)  # (64, 192, 768, 2048)
INPUT_SIZE = 299


def fid_inception_architecture() -> nn.Module:
    """pytorch_fid.inception.fid_inception_v3 without its weights: torchvision's Inception3 (1008 classes,
    no auxiliary head) with the FID variants of the mixed blocks (TensorFlow's pooling)."""
    inception = torchvision.models.inception_v3(weights=None, num_classes=1008, aux_logits=False, init_weights=False)
    inception.Mixed_5b = pf.FIDInceptionA(192, pool_features=32)
    inception.Mixed_5c = pf.FIDInceptionA(256, pool_features=64)
    inception.Mixed_5d = pf.FIDInceptionA(288, pool_features=64)
    inception.Mixed_6b = pf.FIDInceptionC(768, channels_7x7=128)
    inception.Mixed_6c = pf.FIDInceptionC(768, channels_7x7=160)
    inception.Mixed_6d = pf.FIDInceptionC(768, channels_7x7=160)
    inception.Mixed_6e = pf.FIDInceptionC(768, channels_7x7=192)
    inception.Mixed_7b = pf.FIDInceptionE_1(1280)
    inception.Mixed_7c = pf.FIDInceptionE_2(2048)
    return inception


class FIDInception(nn.Module):
    """pytorch-fid's ``InceptionV3([block of dims], resize_input=True, normalize_input=True)`` on a given trunk,
    returning the block's maps averaged over space: images (B, 3, H, W) in [0, 1] -> (B, dims)."""

    def __init__(self, trunk: nn.Module, dims: int = 2048):
        super().__init__()
        if dims not in DIMS:
            raise ValueError(f"dims must be one of {DIMS}, got {dims}")
        t = trunk
        blocks = [
            [t.Conv2d_1a_3x3, t.Conv2d_2a_3x3, t.Conv2d_2b_3x3, nn.MaxPool2d(kernel_size=3, stride=2)],  # 64
            [t.Conv2d_3b_1x1, t.Conv2d_4a_3x3, nn.MaxPool2d(kernel_size=3, stride=2)],  # 192
            [t.Mixed_5b, t.Mixed_5c, t.Mixed_5d, t.Mixed_6a, t.Mixed_6b, t.Mixed_6c, t.Mixed_6d, t.Mixed_6e],  # 768
            [t.Mixed_7a, t.Mixed_7b, t.Mixed_7c],  # 2048
        ]
        self.dims = dims
        self.blocks = nn.Sequential(*(nn.Sequential(*b) for b in blocks[:DIMS.index(dims) + 1]))

    def forward(self, images: Tensor) -> Tensor:
        x = F.interpolate(images, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        x = self.blocks(2 * x - 1)  # (B, dims, h, w)
        return F.adaptive_avg_pool2d(x, output_size=(1, 1)).flatten(1)  # (B, dims)


def build(state_dict: dict[str, Tensor], dims: int = 2048) -> FIDInception:
    """The FID network with a trunk's weights (fpa_core.metrics.weights), at ``dims``, in eval mode."""
    trunk = fid_inception_architecture()
    missing, unexpected = trunk.load_state_dict(state_dict, strict=False)
    bad = [k for k in missing if not k.startswith("fc.") and not k.endswith("num_batches_tracked")]  # unused
    if bad or unexpected:
        raise ValueError(f"not the FID Inception trunk's weights: missing {bad[:3]}, unexpected {unexpected[:3]}")
    return FIDInception(trunk, dims).eval().requires_grad_(False)
