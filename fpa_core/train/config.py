"""One typed config for a training run, loaded from YAML, overridable with ``--set key=value``.

Packaged configs live in ``fpa_core/configs/`` and are found by name (``--config digits``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal


from fpa_core.config import ConfigError, from_dict, merge, parse_overrides, read_mapping
from fpa_core.model_config import DiscriminatorConfig, ModelConfig, UNetConfig


RANGES = ([-1.0, 1.0], [0.0, 1.0])


@dataclass
class DataConfig:
    dataset: str = "digits"  # a name (digits, celeba, metfaces, ...), a folder or a zip
    resolution: int = 64  # images are resized on the shorter side and centre-cropped to this
    # The pixel range D sees reals in, against G's tanh output: [-1, 1] makes the empty canvas W_0 = 0
    # mid-grey; [0, 1] (the authors' code) makes it black, and G's negative values darker than black.
    range: list[float] = field(default_factory=lambda: [-1.0, 1.0])

    def validate(self) -> list[str]:
        if [float(v) for v in self.range] not in RANGES:
            return [f"range: must be [-1, 1] or [0, 1], got {self.range}"]
        return []


@dataclass
class OptimConfig:
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.9
    batch_size: int = 20
    grad_accum: int = 1  # batches per optimiser step
    d_lr_mult: float = 1.0  # D's learning rate is lr x this (the reference's ttur_mult, 1 in its runs)

    def validate(self) -> list[str]:
        errors = [f"{n}: must be in [0, 1), got {getattr(self, n)}" for n in ("beta1", "beta2")
                  if not 0 <= getattr(self, n) < 1]
        errors += [f"{n}: must be a positive integer, got {getattr(self, n)}" for n in ("batch_size", "grad_accum")
                   if getattr(self, n) < 1]
        errors += [f"{n}: must be a positive, finite number, got {getattr(self, n)}" for n in ("lr", "d_lr_mult")
                   if not 0 < getattr(self, n) < float("inf")]
        return errors


@dataclass
class LossConfig:
    gp_every: int = 4  # the gradient penalty on reals every N steps; 0 turns it off
    gp_weight: float = 10.0
    hinge_weight: float = 1.0  # D's hinge term; the authors' U-Net stage halves it (their hinge_loss_bis)
    recon_weight: float = 1.0  # D's self-supervised reconstruction of reals
    augment: list[str] = field(default_factory=list)  # DiffAugment policy: color, translation, cutout
    augment_prob: float = 0.0

    def validate(self) -> list[str]:
        errors = [f"{n}: must be a finite number >= 0, got {getattr(self, n)}"
                  for n in ("gp_weight", "hinge_weight", "recon_weight") if not 0 <= getattr(self, n) < float("inf")]
        if self.gp_every < 0:
            errors.append(f"gp_every: must be >= 0, got {self.gp_every}")
        if not 0 <= self.augment_prob <= 1:
            errors.append(f"augment_prob: must be in [0, 1], got {self.augment_prob}")
        bad = [p for p in self.augment if p not in ("color", "translation", "cutout")]
        if bad:
            errors.append(f"augment: unknown policies {bad}; choose from color, translation, cutout")
        return errors


@dataclass
class EMAConfig:
    """The EMA copy of G that evaluations and pictures use. At a step s (counted from 1):

        if copy_every and s <= copy_until and s % copy_every == copy_offset:   ema <- G
        elif s >= start and s % every == offset:                               ema <- beta * ema + (1 - beta) * G

    The default averages every 10 steps from the start. The authors' code (``REFERENCE_EMA``, which the
    Table 3 configs use) averages with beta 0.995 every 10 steps after its 0-based step 20,000 and copies G
    in at its 0-based steps 2, 1002, ..., 24002, so that early evaluations see a recent G.
    """

    beta: float = 0.99
    every: int = 10  # steps between updates
    offset: int = 0  # the updates fall on the steps s with s % every == offset
    start: int = 0  # the first step that may update it
    copy_every: int = 0  # steps between copies of G into it; 0: never
    copy_offset: int = 0  # the copies fall on the steps s with s % copy_every == copy_offset
    copy_until: int = 0  # the last step that may copy

    def validate(self) -> list[str]:
        errors = [] if 0 <= self.beta < 1 else [f"beta: must be in [0, 1), got {self.beta}"]
        if self.every < 1:
            errors.append(f"every: must be a positive integer, got {self.every}")
        errors += [f"{n}: must be >= 0, got {getattr(self, n)}" for n in ("start", "copy_every", "copy_until")
                   if getattr(self, n) < 0]
        if not 0 <= self.offset < max(self.every, 1):
            errors.append(f"offset: must be in [0, every = {self.every}), got {self.offset}")
        if self.copy_every and not 0 <= self.copy_offset < self.copy_every:
            errors.append(f"copy_offset: must be in [0, copy_every = {self.copy_every}), got {self.copy_offset}")
        return errors


# The authors' schedule in our 1-based steps: their step s is our s + 1.
REFERENCE_EMA = EMAConfig(beta=0.995, every=10, offset=1, start=20_011, copy_every=1000, copy_offset=3,
                          copy_until=25_001)


@dataclass
class FIDConfig:
    """The periodic evaluation: FID, KID and precision/recall of the EMA generator (fpa_core.metrics.evaluator)."""

    every: int = 5000  # steps between evaluations (and at the last step)
    num_images: int = 10000  # generated images per evaluation
    dims: Literal[64, 192, 768, 2048] = 2048
    backbone: Literal["inception", "inception-random"] = "inception"  # inception-random is uncalibrated
    image_format: Literal["jpeg", "png"] = "jpeg"  # the paper's FIDs went through JPEG
    batch_size: int = 50
    metric: Literal["fid", "kid"] = "fid"  # what picks best.pt, and what a sweep minimises

    def validate(self) -> list[str]:
        errors = [f"{n}: must be a positive integer, got {getattr(self, n)}"
                  for n in ("every", "batch_size") if getattr(self, n) < 1]
        if self.num_images < 2:
            errors.append(f"num_images: FID, KID and precision/recall need at least 2 images, got {self.num_images}")
        return errors


@dataclass
class CheckpointConfig:
    every: int = 1000  # steps between ``latest`` checkpoints (also after every FID evaluation)
    keep: int = 2  # how many ``latest`` checkpoints to keep; ``best`` is kept apart

    def validate(self) -> list[str]:
        return [f"{n}: must be a positive integer, got {getattr(self, n)}"
                for n in ("every", "keep") if getattr(self, n) < 1]


@dataclass
class PicturesConfig:
    samples: int = 64  # images in the sample grid
    paintings: int = 4  # latents in the painting strip and GIF

    def validate(self) -> list[str]:
        return [f"{n}: must be a positive integer, got {getattr(self, n)}"
                for n in ("samples", "paintings") if getattr(self, n) < 1]


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    fid: FIDConfig = field(default_factory=FIDConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    pictures: PicturesConfig = field(default_factory=PicturesConfig)
    # stage unet (Sec. 3.2): a U-Net refines the frozen FPA of base_generator (a checkpoint, local or
    # s3://); only the U-Net trains, and the model section is the base's own.
    stage: Literal["fpa", "unet"] = "fpa"
    unet: UNetConfig = field(default_factory=UNetConfig)
    base_generator: str = ""
    steps: int = 100_000
    seed: int = 0
    log_every: int = 50
    device: str = "auto"  # auto (CUDA when there is one), cpu, cuda, cuda:1, ...
    # fp32, as the authors' code trains; bf16: autocast for D and the U-Net, with G's LSTM, update net
    # and learning rule in float32 (fpa_core/model.py)
    precision: Literal["fp32", "bf16"] = "fp32"

    def validate(self) -> list[str]:
        errors = []
        res = self.data.resolution
        if (self.model.height, self.model.width) != (res, res):
            errors.append(f"data.resolution: {res} does not match the painted image "
                          f"{self.model.height} x {self.model.width} (model.height x model.width)")
        if self.model.channels not in (1, 3):
            errors.append(f"model.channels: 1 (grey) or 3 (RGB), got {self.model.channels}")
        if self.steps < 0:
            errors.append(f"steps: must be >= 0, got {self.steps}")
        if self.log_every < 1:
            errors.append(f"log_every: must be a positive integer, got {self.log_every}")
        if self.stage == "unet":
            if not self.base_generator:
                errors.append("base_generator: stage unet refines a trained FPA: give its checkpoint "
                              "(local or s3://), e.g. runs/x/checkpoints/best.pt")
            errors += [f"unet.{e}" for e in self.unet.check_resolution(self.model.height, self.model.width)]
        elif self.base_generator:
            errors.append("base_generator: only stage unet uses a base generator; set stage: unet or drop it")
        if self.device != "auto" and self.device != "cpu" and not self.device.startswith("cuda"):
            errors.append(f"device: {self.device!r} is not one of auto, cpu, cuda, cuda:N")
        return errors


def _configs_dir():
    return resources.files("fpa_core").joinpath("configs")


def packaged_configs() -> list[str]:
    return sorted(p.name[:-5] for p in _configs_dir().iterdir() if p.name.endswith(".yaml"))


def config_dict(name_or_path: str) -> dict[str, Any]:
    """The raw mapping of a packaged config (by name) or a YAML file."""
    if name_or_path in packaged_configs():
        text = _configs_dir().joinpath(f"{name_or_path}.yaml").read_text()
        source = f"packaged config {name_or_path}"
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise ConfigError([f"--config {name_or_path!r}: neither a packaged config "
                               f"({', '.join(packaged_configs())}) nor a YAML file"], "config")
        text, source = path.read_text(), str(path)
    return read_mapping(text, source, source, "section: fields")


def build_config(data: dict[str, Any], overrides: list[str] | dict[str, Any] = (), source: str = "config") -> TrainConfig:
    """A TrainConfig from a mapping plus ``key=value`` overrides; every bad field is named."""
    extra = overrides if isinstance(overrides, dict) else parse_overrides(list(overrides))
    return from_dict(TrainConfig, merge(data, extra), source)


def load_config(name_or_path: str, overrides: list[str] | dict[str, Any] = ()) -> TrainConfig:
    return build_config(config_dict(name_or_path), overrides, name_or_path)
