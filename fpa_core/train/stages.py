"""The generator a run trains, by its stage (``TrainConfig.stage``).

    stage fpa    G = FPAGenerator(model)                        everything trains
    stage unet   G = RefinedGenerator(frozen FPA, UNet(unet))   W' = UNet(W_T), Sec. 3.2; only the U-Net trains

A new U-Net stage reads its base checkpoint (``base_generator``) once: the model section becomes the base's
own, the FPA starts from the base's raw G (its EMA weights where the base is an exported model, which has
no other), and D from the base's D where it has one of the same shape, as the authors' code does. A resumed
U-Net stage finds the frozen FPA's weights in its own checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import torch

from fpa_core import checkpoint
from fpa_core.config import from_dict, to_dict
from fpa_core.model import FPAGenerator
from fpa_core.model_config import ModelConfig
from fpa_core.train.config import TrainConfig
from fpa_core.train.errors import CannotTrainError
from fpa_core.unet import RefinedGenerator, build_unet

log = logging.getLogger(__name__)


@dataclass
class Stage:
    """What a run's stage decides before it trains."""

    config: TrainConfig  # stage unet: the model section is the base FPA's
    generator: torch.nn.Module
    base: dict[str, Any] | None  # stage unet: the frozen FPA (its uri, step and scores), kept in checkpoints
    base_state: dict[str, Any] | None  # a new U-Net stage: the base checkpoint, for its discriminator


def build_stage(config: TrainConfig, resumed: dict[str, Any] | None) -> Stage:
    """The generator of ``config``'s stage; ``resumed``: the checkpoint a run continues from, if any."""
    if config.stage == "fpa":
        return Stage(config, FPAGenerator(config.model), None, None)
    if resumed is not None:  # the frozen FPA's weights are in the run's own checkpoint
        generator = RefinedGenerator(FPAGenerator(config.model), build_unet(config.unet))
        return Stage(config, generator, resumed.get("base"), None)
    state = checkpoint.load(config.base_generator)
    config, base = _adopt_base(config, state)
    raw = "generator" in state  # the authors' code starts from the base's raw G (their EMA takes G's weights)
    if not raw:
        log.info("%s holds only its EMA generator: the U-Net refines that", config.base_generator)
    fpa = checkpoint.generator_from_state(state, ema=not raw, source=config.base_generator)
    return Stage(config, RefinedGenerator(fpa, build_unet(config.unet)), base, state)


def _adopt_base(config: TrainConfig, state: dict[str, Any]) -> tuple[TrainConfig, dict[str, Any]]:
    """The model section becomes the base FPA's own and the U-Net takes its channels; its scores are kept."""
    saved = state["config"]
    if saved.get("stage", "fpa") != "fpa":
        raise CannotTrainError(f"base_generator {config.base_generator} is itself a U-Net stage; give an FPA "
                               "checkpoint")
    model = from_dict(ModelConfig, saved["model"], f"the model config in {config.base_generator}")
    if (model.height, model.width) != (config.data.resolution,) * 2:
        raise CannotTrainError(f"base_generator {config.base_generator} paints {model.height}x{model.width} "
                               f"images, but data.resolution is {config.data.resolution}; set it to {model.height}")
    scores = next((e for e in state["evaluations"] if e["step"] == state["step"]), {})
    base = {"uri": config.base_generator, "step": state["step"], "fid": scores.get("fid"), "kid": scores.get("kid"),
            **{k: state.get(k) for k in ("fid_backbone", "fid_calibrated", "fid_weights")}}
    unet = dataclasses.replace(config.unet, channels=model.channels)  # it refines the FPA's own image
    return dataclasses.replace(config, model=model, unet=unet), base


def adopt_discriminator(D: torch.nn.Module, config: TrainConfig, base_state: dict[str, Any]) -> None:
    """A new U-Net stage goes on with the base's trained D where the checkpoint has one of the same shape."""
    saved = base_state.get("config", {}).get("discriminator")
    if "discriminator" not in base_state or saved != to_dict(config.discriminator):
        log.info("%s has no discriminator like this stage's: D starts anew", config.base_generator)
        return
    D.load_state_dict(base_state["discriminator"])
