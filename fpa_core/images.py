"""Conversions between image arrays and tensors, in one place.

    uint8 arrays  (N, H, W, 3)      what datasets hold and image files store
    tensors       (N, C, H, W)      in [-1, 1] (what G paints and D sees) or [0, 1] (what Inception reads)

Grey images (C = 1) become three equal channels on the way to uint8, as pytorch-fid's
``Image.convert("RGB")`` makes them.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image
from torch import Tensor

IMAGE_FORMATS = ("jpeg", "png")
_PIL_FORMATS = {"jpeg": "JPEG", "png": "PNG"}


def to_uint8(images: Tensor) -> np.ndarray:
    """(B, C, H, W) floats in [-1, 1], C = 1 or 3 -> (B, H, W, 3) uint8, rounded as torchvision's save_image:
    floor(255 x + 0.5) of x = (clamp(images, -1, 1) + 1) / 2."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images (B, 1 or 3, H, W), got {tuple(images.shape)}")
    x = (images.detach().float().clamp(-1, 1) + 1) / 2
    x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
    return x.mul(255).add(0.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def to_tensor(images: np.ndarray, channels: int = 3) -> Tensor:
    """A uint8 batch (B, H, W, 3) as float32 (B, channels, H, W) in [-1, 1] (0 -> -1, 255 -> 1). One channel
    is the first of three equal ones (grey data) or, for colour data, Pillow's luma L = (299 R + 587 G + 114 B) / 1000."""
    batch = np.asarray(images)
    if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[-1] != 3:
        raise ValueError(f"expected a uint8 batch of shape (B, H, W, 3), got {batch.dtype} {batch.shape}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    chw = torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32))  # (B, 3, H, W)
    if channels == 1:
        grey = bool((batch[..., :1] == batch[..., 1:]).all())
        chw = chw[:, :1] if grey else (chw * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    return chw.div_(127.5).sub_(1.0)


def round_trip(images: np.ndarray, image_format: str) -> np.ndarray:
    """(B, H, W, 3) uint8 -> the same after an in-memory JPEG (Pillow's default quality 75) or PNG file."""
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
    pil_format = _PIL_FORMATS[image_format]
    out = np.empty(images.shape, dtype=np.uint8)
    for i, image in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format=pil_format)
        out[i] = np.asarray(Image.open(buffer, formats=[pil_format]).convert("RGB"))
    return out


def to_unit_float(images: np.ndarray) -> Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 in [0, 1], as torchvision's ToTensor (what pytorch-fid reads)."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(255)


def check_uint8_images(images: np.ndarray) -> None:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(f"expected uint8 images (N, H, W, 3), got {images.dtype} {tuple(images.shape)}")
