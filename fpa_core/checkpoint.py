"""Checkpoints: everything a run needs to continue, written atomically, loaded without pickle code.

A checkpoint is a dict of tensors and plain Python values (no NumPy arrays, no classes), so that
``torch.load(..., weights_only=True)`` reads it: a checkpoint fetched from S3 cannot run code.
"""

from __future__ import annotations

import random
import re
from importlib.metadata import entry_points
from typing import Any

import numpy as np
import torch

from fpa_core import storage
from fpa_core.config import from_dict
from fpa_core.model import FPAGenerator
from fpa_core.model_config import ModelConfig, UNetConfig
from fpa_core.unet import RefinedGenerator, build_unet

FORMAT_VERSION = 2  # 2: "evaluations" (every score of every evaluation) replaced 1's "fid_history" and "best"
LATEST_RE = re.compile(r"^latest-(\d{8})\.pt$")


def save(uri: str, state: dict[str, Any]) -> None:
    """Write ``state`` to ``uri`` atomically, streamed through a file (never a second copy in memory). A write
    that fails (a full disk) raises its OSError."""
    with storage.writing(uri) as path, open(path, "wb") as f:
        sink = _Sink(f)
        try:
            torch.save({"format_version": FORMAT_VERSION, **state}, sink)
        except RuntimeError:
            if sink.error is not None:  # torch reports a failed write as "enforce fail ... unexpected pos"
                raise sink.error from None
            raise


class _Sink:
    """A file for torch.save that keeps the OSError of a write that failed."""

    def __init__(self, file):
        self.file, self.error = file, None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.file.flush()


def load(uri: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint's state, its tensors mapped from the file (``mmap``: pages are read as they are used,
    and nothing is held twice)."""
    try:
        with storage.reading(uri) as path:
            try:
                state = torch.load(path, map_location=map_location, weights_only=True, mmap=True)
            except Exception as e:  # a truncated file, a foreign pickle, or one that would run code
                raise ValueError(f"{uri} is not a readable FPA checkpoint ({type(e).__name__}: {e})") from None
    except FileNotFoundError:
        raise FileNotFoundError(f"no checkpoint at {uri}") from None
    if not isinstance(state, dict) or state.get("format_version") not in (1, FORMAT_VERSION):
        raise ValueError(f"{uri} is not an FPA checkpoint of format version 1 or {FORMAT_VERSION}")
    return _upgrade(state)


def _upgrade(state: dict[str, Any]) -> dict[str, Any]:
    """A format 1 checkpoint as format 2: its FIDs become evaluations without the other scores. A U-Net
    config from before ``unet.arch`` existed names the U-Net it was: ``resnet``, without a final tanh."""
    unet = state.get("config", {}).get("unet")
    if isinstance(unet, dict) and "arch" not in unet:
        unet.update(arch="resnet", output_tanh=False)
    if state["format_version"] == 1:
        state["evaluations"] = [{"step": int(step), "fid": fid} for step, fid in state.pop("fid_history")]
        state.pop("best", None)
        state["format_version"] = FORMAT_VERSION
    return state


EXPORTED = ("step", "config", "generator_ema", "dataset", "evaluations", "fid_calibrated", "fid_backbone",
            "fid_weights", "base")


def generator_only(state: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's EMA generator and what describes it, without D, optimisers or RNG states: what a
    model registry holds (``load_generator`` reads it like a checkpoint)."""
    return {"format_version": FORMAT_VERSION, **{key: state[key] for key in EXPORTED if key in state}}


def trimmed(state: dict[str, Any]) -> dict[str, Any]:
    """What a sweep keeps of a trial outside its best few (``--keep-full``): the exported generator and the raw
    G (what a U-Net stage starts from), marked ``trimmed``. It loads, paints, evaluates and promotes like the
    full checkpoint; a run cannot continue from it (no D, optimisers or RNG states)."""
    return {**generator_only(state), **({"generator": state["generator"]} if "generator" in state else {}),
            "trimmed": True}


def stage_base(state: dict[str, Any]) -> dict[str, Any]:
    """What a U-Net stage takes from an FPA checkpoint: the exported generator, and where the checkpoint has
    them the raw G and D the stage starts from (not the optimisers or RNG states)."""
    return {**generator_only(state), **{key: state[key] for key in ("generator", "discriminator") if key in state}}


def load_generator(uri: str, ema: bool = True, device: str | torch.device = "cpu",
                   tracking_uri: str | None = None) -> torch.nn.Module:
    """The generator of a checkpoint (its EMA copy by default), in eval mode: an FPAGenerator, or a
    RefinedGenerator (FPA + U-Net) from a U-Net stage.

    ``uri``: a training checkpoint or an exported generator, local or ``s3://``; or a registered model,
    ``models:/fpa-metfaces@champion`` or ``models:/fpa-metfaces/3``, looked up in the MLflow registry
    at ``tracking_uri`` (default: MLFLOW_TRACKING_URI, else ./mlflow.db) when the sweep package is installed.
    """
    return generator_from_state(load(resolve(uri, tracking_uri), map_location=device), ema, uri).to(device)


def generator_from_state(state: dict[str, Any], ema: bool = True, source: str = "the checkpoint") -> torch.nn.Module:
    """The generator a loaded checkpoint holds, in eval mode (see load_generator)."""
    key = "generator_ema" if ema else "generator"
    if key not in state:
        raise ValueError(f"{source} holds only the EMA generator (an exported model); drop --raw")
    config = state["config"]
    model = FPAGenerator(from_dict(ModelConfig, config["model"], f"the model config in {source}"))
    if config.get("stage", "fpa") == "unet":
        unet = from_dict(UNetConfig, config["unet"], f"the unet config in {source}")
        model = RefinedGenerator(model, build_unet(unet))
    model.load_state_dict(state[key])
    return model.eval()


def value_range(state: dict[str, Any]) -> tuple[float, float]:
    """The pixel range of a checkpoint's data (data.range): what its generator's outputs mean."""
    low, high = state["config"].get("data", {}).get("range", (-1.0, 1.0))
    return float(low), float(high)


def resolve(uri: str, tracking_uri: str | None = None) -> str:
    """A checkpoint's location: ``uri`` itself, or for ``models:/NAME@ALIAS`` and ``models:/NAME/VERSION`` the
    local file of the registered model, through the resolver that the sweep package registers under the entry
    point group ``fpa_core.model_registries`` (fpa_core itself never imports MLflow)."""
    if not uri.startswith("models:/"):
        return uri
    resolvers = {ep.name: ep for ep in entry_points(group="fpa_core.model_registries")}
    if "models" not in resolvers:
        raise ValueError(f"{uri}: models:/ URIs need the sweep package (pip install 'fast-weight-painters[sweep]'); "
                         "or pass the checkpoint file itself")
    return resolvers["models"].load()(uri, tracking_uri)


def latest_name(step: int) -> str:
    return f"latest-{step:08d}.pt"


def latest_checkpoints(folder: str) -> list[tuple[int, str]]:
    """(step, uri) of the ``latest-*`` checkpoints in a folder, oldest first."""
    found = [(int(m.group(1)), storage.join(folder, name))
             for name in storage.list_names(folder) if (m := LATEST_RE.match(name))]
    return sorted(found)


def prune_latest(folder: str, keep: int) -> None:
    """Keep the ``keep`` newest ``latest-*`` checkpoints."""
    for _, uri in latest_checkpoints(folder)[:-keep]:
        storage.remove(uri)


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch and CUDA generator states, as weights-only-loadable values."""
    np_state = np.random.get_state(legacy=False)
    return {
        "python": _to_lists(random.getstate()),
        "numpy": {"bit_generator": np_state["bit_generator"], "key": np_state["state"]["key"].tolist(),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state({"bit_generator": np_state["bit_generator"],
                         "state": {"key": np.array(np_state["key"], dtype=np.uint32), "pos": np_state["pos"]},
                         "has_gauss": np_state["has_gauss"], "gauss": np_state["gauss"]})
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(value):
    return [_to_lists(v) for v in value] if isinstance(value, (tuple, list)) else value
