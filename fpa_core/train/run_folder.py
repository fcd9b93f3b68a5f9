"""A run's folder and its state: what is written where, what a checkpoint holds, and how a run comes back.

The folder (a local path or ``s3://bucket/prefix``)::

    config.yaml  metrics.jsonl  summary.json
    checkpoints/latest-<step>.pt  checkpoints/best.pt
    samples/grid-<step>.png  painting/strip-<step>.png  painting/painting-<step>.gif

A checkpoint (``state``) holds both networks, the EMA generator, both optimisers, every RNG state, the
config, the dataset's fingerprint and every evaluation's scores, so that a resumed run on CPU repeats the
uninterrupted one bit for bit (``restore``).
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

import yaml

from fpa_core import checkpoint, storage
from fpa_core.config import to_dict
from fpa_core.metrics import best_evaluation
from fpa_core.train.config import TrainConfig
from fpa_core.train.errors import CannotTrainError

if TYPE_CHECKING:
    from fpa_core.train.trainer import Trainer

log = logging.getLogger(__name__)


class RunFolder:
    """The run's outputs, local or on S3, and its metrics log."""

    def __init__(self, root: str):
        self.root = str(root)
        self.records: list[dict[str, Any]] = []  # metrics.jsonl, one record per line

    def uri(self, *parts: str) -> str:
        return storage.join(self.root, *parts)

    @property
    def best_checkpoint(self) -> str:
        return self.uri("checkpoints", "best.pt")

    def write(self, rel: str, data: bytes | str) -> str:
        uri = self.uri(rel)
        storage.write_bytes(uri, data.encode() if isinstance(data, str) else data)
        return uri

    def write_config(self, config: TrainConfig) -> None:
        self.write("config.yaml", yaml.safe_dump(to_dict(config), sort_keys=False))

    def log(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        if not storage.is_s3(self.root):  # a local log grows line by line; S3 objects are rewritten on flush
            with open(self.uri("metrics.jsonl"), "a") as f:
                f.write(json.dumps(record) + "\n")

    def flush(self) -> None:
        self.write("metrics.jsonl", "".join(json.dumps(r) + "\n" for r in self.records))

    def load_metrics(self, up_to_step: int) -> int:
        """Keep the records up to a checkpoint's step: later ones belong to a lost stretch, whose length in
        steps (as far as the log saw) is returned."""
        try:
            text = storage.read_bytes(self.uri("metrics.jsonl")).decode()
        except FileNotFoundError:
            text = ""
        records = [json.loads(line) for line in text.splitlines()]
        self.records = [r for r in records if r["step"] <= up_to_step]
        self.flush()
        return max([0] + [r["step"] - up_to_step for r in records])

    def existing_run(self) -> int | None:
        """The step of the newest ``latest`` checkpoint here, or None for a folder that holds no run."""
        found = checkpoint.latest_checkpoints(self.uri("checkpoints"))
        return found[-1][0] if found else None

    def save_latest(self, step: int, state: dict[str, Any]) -> str:
        """``checkpoints/latest-<step>.pt``, whole once this returns (written to a temporary file, then published)."""
        uri = self.uri("checkpoints", checkpoint.latest_name(step))
        checkpoint.save(uri, state)
        return uri

    def tidy(self, keep: int) -> None:
        """After a new ``latest``: the older ones beyond the newest ``keep`` removed, the log flushed on S3."""
        checkpoint.prune_latest(self.uri("checkpoints"), keep)
        if storage.is_s3(self.root):
            self.flush()

    def save_best(self, state: dict[str, Any]) -> None:
        checkpoint.save(self.best_checkpoint, state)


def newest_readable(uris: list[str], out: str) -> tuple[str, dict[str, Any]]:
    """The newest of ``uris`` (oldest first) that loads, and its state; an unreadable one (truncated by a full
    disk or a kill) is skipped with a warning."""
    for uri in reversed(uris):
        try:
            return uri, checkpoint.load(uri)
        except ValueError as e:
            log.warning("skipping %s: %s", uri, e)
    raise ValueError(f"none of the {len(uris)} checkpoints of {out} can be read (see the warnings above); "
                     "start a new run without --resume")


def state(trainer: Trainer) -> dict[str, Any]:
    """Everything a checkpoint holds."""
    return {
        "step": trainer.step,
        "config": to_dict(trainer.cfg),
        "generator": trainer.G.state_dict(),
        "generator_ema": trainer.G_ema.state_dict(),
        "discriminator": trainer.D.state_dict(),
        "opt_g": trainer.opt_g.state_dict(),
        "opt_d": trainer.opt_d.state_dict(),
        "rng": checkpoint.rng_state(),
        "dataset": {"name": trainer.data.name, "fingerprint": trainer.data.fingerprint},
        "evaluations": [dict(e) for e in trainer.evaluations],
        "fid_calibrated": trainer.evaluator.calibrated,
        "fid_backbone": trainer.cfg.fid.backbone,
        "fid_weights": trainer.evaluator.weights_sha256,
        "wall_time_s": trainer.wall_time_s,
        **({"base": trainer.base} if trainer.base else {}),
    }


def restore(trainer: Trainer, saved: dict[str, Any], uri: str) -> None:
    """The trainer as ``saved`` (read from ``uri``) left it; the learning rates are the config's, which may have
    changed on resume. The metrics logged after the checkpoint's step are dropped and redone."""
    if saved.get("trimmed") or "opt_g" not in saved:
        what = ("trimmed by its sweep: the trial ended outside the best few that keep every checkpoint, "
                "--keep-full") if saved.get("trimmed") else "an exported generator"
        raise CannotTrainError(f"{uri} holds only a generator ({what}), not a run's full state (D, optimisers, RNG "
                               "states): no run continues from it; start a new run, or continue a trial the sweep "
                               "kept whole")
    trainer.G.load_state_dict(saved["generator"])
    trainer.G_ema.load_state_dict(saved["generator_ema"])
    trainer.D.load_state_dict(saved["discriminator"])
    trainer.opt_g.load_state_dict(saved["opt_g"])
    trainer.opt_d.load_state_dict(saved["opt_d"])
    optim = trainer.cfg.optim
    for opt, lr in ((trainer.opt_g, optim.lr), (trainer.opt_d, optim.lr * optim.d_lr_mult)):
        for group in opt.param_groups:
            group["lr"] = lr
    trainer.step, trainer.wall_time_s = saved["step"], saved["wall_time_s"]
    trainer.evaluations = [dict(e) for e in saved["evaluations"]]
    trainer.last_checkpoint = uri
    checkpoint.set_rng_state(saved["rng"])
    folder = trainer.folder
    lost = folder.load_metrics(up_to_step=trainer.step)
    folder.log({"step": trainer.step, "event": "resumed", "from": uri, "lost_steps": lost,
                "time": round(time.time(), 3)})
    folder.write_config(trainer.cfg)
    log.info("resumed from %s at step %d (%d logged steps after it are redone)", uri, trainer.step, lost)


def write_summary(trainer: Trainer) -> dict[str, Any]:
    """summary.json: the best evaluation by the config's ``fid.metric`` (what best.pt holds), the last one,
    every evaluation, and where the checkpoints are."""
    metric = trainer.cfg.fid.metric
    best = best_evaluation(trainer.evaluations, metric)
    summary = {
        "out": trainer.folder.root,
        "dataset": trainer.data.name,
        "steps": trainer.step,
        "metric": metric,  # what picked best
        "best": best,
        "final": trainer.evaluations[-1] if trainer.evaluations else None,
        "fid_calibrated": trainer.evaluator.calibrated,
        "fid_backbone": trainer.cfg.fid.backbone,
        "fid_weights": trainer.evaluator.weights_sha256,
        "evaluations": trainer.evaluations,
        "wall_time_s": round(trainer.wall_time_s, 2),
        **({"stage": "unet", "base": trainer.base} if trainer.base else {}),
        "checkpoints": {"latest": trainer.last_checkpoint, "best": trainer.folder.best_checkpoint if best else None},
    }
    trainer.folder.flush()
    trainer.folder.write("summary.json", json.dumps(summary, indent=2))
    return summary
