"""Training an FPA GAN as the paper did (Sec. 3.3, 4 and Appendix B).

One step = one discriminator update (hinge loss on both heads, reconstruction of reals, a gradient
penalty every ``loss.gp_every`` steps) then one generator update, each over ``optim.grad_accum``
batches; an EMA copy of G is what FID and the pictures use.

Determinism: every random draw of a step comes from torch's global generator, whose state (with
Python's, NumPy's and CUDA's) is in each checkpoint, and evaluations draw from private generators.
On CPU a resumed run therefore reproduces an uninterrupted one bit for bit.

What a run writes, and what its checkpoints hold: ``fpa_core.train.run_folder``. Which generator a stage
trains (an FPA, or a U-Net on a frozen one): ``fpa_core.train.stages``.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from fpa_core import checkpoint, pictures, storage
from fpa_core.augment import maybe_augment
from fpa_core.data import ImageSet, load_images
from fpa_core.discriminator import Discriminator
from fpa_core.images import to_tensor
from fpa_core.losses import discriminator_loss, generator_loss, gradient_penalty, reconstruction_loss
from fpa_core.metrics import best_evaluation, describe
from fpa_core.metrics.evaluator import Evaluator, Scores, latent_sampler
from fpa_core.progress import Progress
from fpa_core.train import run_folder
from fpa_core.train.config import TrainConfig, build_config
from fpa_core.train.errors import CannotTrainError, NonFiniteLossError, RunExistsError
from fpa_core.train.run_folder import RunFolder
from fpa_core.train.stages import adopt_discriminator, build_stage

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """What the trainer knows after a periodic evaluation (handed to ``on_evaluation``)."""

    step: int
    scores: Scores
    best: dict[str, Any]  # the best evaluation so far by the config's fid.metric: its step and scores
    calibrated: bool
    losses: dict[str, float]
    images_per_s: float
    checkpoint: str  # the latest checkpoint, written at this step
    best_checkpoint: str
    wall_time_s: float = 0.0  # training and evaluating so far, as the checkpoints count it (across resumes)
    pictures: dict[str, str] = field(default_factory=dict)  # grid, strip, gif -> uri
    picture_bytes: dict[str, bytes] = field(default_factory=dict)  # grid, strip, gif -> the encoded file


class Trainer:
    """Trains one FPA GAN. ``Trainer(config, out).train()`` returns the run's summary."""

    def __init__(self, config: TrainConfig, out: str, *, resume_from: str | None = None,
                 resume_state: dict[str, Any] | None = None,
                 on_evaluation: Callable[[Evaluation], None] | None = None, fid_cache_uri: str | None = None):
        """``resume_from``: a checkpoint to continue from; ``resume_state``: the same checkpoint already loaded
        (``from_checkpoint`` reads it once, for the config and the state)."""
        self.cfg, self.folder, self.on_evaluation = config, RunFolder(out), on_evaluation
        self.value_range = (float(config.data.range[0]), float(config.data.range[1]))
        self.device = _device(config.device)
        if config.precision == "bf16" and self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise CannotTrainError(f"precision: bf16 needs a GPU with bfloat16 support, and {self.device} has "
                                   "none; use precision: fp32")
        if resume_from is None and self.folder.existing_run() is not None:
            raise RunExistsError(f"{out} already holds a run (up to step {self.folder.existing_run()}); "
                                 "continue it with --resume, or choose another --out")
        saved = resume_state if resume_state is not None else \
            checkpoint.load(resume_from, self.device) if resume_from else None

        self.data = _training_data(config, saved, resume_from)  # every check of the data before any work
        self.evaluator = _evaluator(config, self.device, fid_cache_uri or real_features_uri(out))

        _seed_everything(config.seed)
        stage = build_stage(config, saved)
        self.cfg = config = stage.config
        self.base = stage.base  # stage unet: the frozen FPA
        self.G = stage.generator.to(self.device)
        self.G_ema = copy.deepcopy(self.G).requires_grad_(False).eval()
        self.D = Discriminator(config.discriminator, image_size=config.data.resolution,
                               channels=config.model.channels).to(self.device)
        if stage.base_state is not None:
            adopt_discriminator(self.D, config, stage.base_state)
        if self.device.type == "cpu":
            self.D.to_channels_last()
        betas = (config.optim.beta1, config.optim.beta2)
        trainable = [p for p in self.G.parameters() if p.requires_grad]  # stage unet: the U-Net's alone
        self.opt_g = torch.optim.Adam(trainable, lr=config.optim.lr, betas=betas)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=config.optim.lr * config.optim.d_lr_mult, betas=betas)

        self.step, self.wall_time_s = 0, 0.0
        self.evaluations: list[dict[str, Any]] = []  # {"step", "fid", "kid", "kid_std", "precision", "recall", ...}
        self.last_checkpoint: str | None = None
        self._pictures: dict[str, str] = {}  # the pictures of the latest evaluation: grid, strip, gif -> uri
        self._picture_bytes: dict[str, bytes] = {}  # the same, encoded
        if saved:
            run_folder.restore(self, saved, resume_from)
        else:
            self.folder.write_config(config)

    @classmethod
    def resume(cls, out: str, overrides: list[str] | dict[str, Any] = (), **kwargs) -> Trainer:
        """Continue the run in ``out`` from its newest ``latest`` checkpoint (overrides may extend ``steps``)."""
        found = checkpoint.latest_checkpoints(storage.join(out, "checkpoints"))
        best = storage.join(out, "checkpoints", "best.pt")
        if not found and storage.exists(best) and checkpoint.load(best).get("trimmed"):
            raise CannotTrainError(f"{out} was trimmed by its sweep (the trial ended outside the best few that keep "
                                   "every checkpoint, --keep-full): only its generator is kept, in checkpoints/"
                                   "best.pt, and no run continues from it")
        if not found:
            raise FileNotFoundError(f"nothing to resume in {out}: it has no checkpoints/latest-*.pt; "
                                    "start a new run without --resume")
        return cls.from_newest([uri for _, uri in found], out, overrides, **kwargs)

    @classmethod
    def from_newest(cls, uris: list[str], out: str, overrides: list[str] | dict[str, Any] = (), **kwargs) -> Trainer:
        """Continue from the newest of ``uris`` (oldest first) that loads; an unreadable one (truncated by a full
        disk or a kill) is skipped with a warning."""
        uri, saved = run_folder.newest_readable(uris, out)
        return cls.from_checkpoint(uri, out, overrides, saved=saved, **kwargs)

    @classmethod
    def from_checkpoint(cls, uri: str, out: str, overrides: list[str] | dict[str, Any] = (),
                        saved: dict[str, Any] | None = None, **kwargs) -> Trainer:
        """Continue from any checkpoint (``latest`` or ``best``; ``saved``: it, loaded), writing to ``out``."""
        saved = saved if saved is not None else checkpoint.load(uri)
        config = build_config(saved["config"], overrides, f"the config saved in {uri}")
        return cls(config, out, resume_from=uri, resume_state=saved, **kwargs)

    # -- the training loop --------------------------------------------------------------------------------

    def train(self) -> dict[str, Any]:
        cfg = self.cfg
        progress = Progress(cfg.steps, start=self.step)
        window_images, window_start = 0, time.perf_counter()
        losses: dict[str, float] = {}
        images_per_s = 0.0
        if self.step >= cfg.steps and not any(e["step"] == self.step for e in self.evaluations):
            self._evaluate()  # --steps 0: the untrained generator's FID
            self._save_latest()
        while self.step < cfg.steps:
            t0 = time.perf_counter()
            losses = self._train_step()
            self.step += 1
            self._update_ema()
            self.wall_time_s += time.perf_counter() - t0
            bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
            if bad:
                raise NonFiniteLossError(
                    f"non-finite loss at step {self.step} ({', '.join(f'{k}={v}' for k, v in bad.items())}); "
                    f"nothing from this step was written. The last good checkpoint is "
                    f"{self.last_checkpoint or 'none yet'}: resume from it with --resume, perhaps with a lower "
                    "optim.lr or loss.gp_weight higher")
            window_images += cfg.optim.batch_size * cfg.optim.grad_accum
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                images_per_s = window_images / max(time.perf_counter() - window_start, 1e-9)
                window_images, window_start = 0, time.perf_counter()
                self.folder.log({"step": self.step, **losses, "images_per_s": round(images_per_s, 2),
                              "wall_time_s": round(self.wall_time_s, 2), "time": round(time.time(), 3)})
            evaluated = self.step % cfg.fid.every == 0 or self.step == cfg.steps
            if evaluated:
                evaluation_start = time.perf_counter()
                scores = self._evaluate()
                self.wall_time_s += time.perf_counter() - evaluation_start
            if evaluated or self.step % cfg.checkpoint.every == 0:
                self._save_latest()
                if evaluated and self.on_evaluation:
                    self.on_evaluation(self._evaluation(scores, losses, images_per_s))
            last = self.evaluations[-1] if self.evaluations else None
            progress.update(self.step, {"d": f"{losses['d_loss']:.3f}", "g": f"{losses['g_loss']:.3f}",
                                        "img/s": f"{images_per_s:.0f}",
                                        "fid": f"{last['fid']:.2f}" if last else "-",
                                        "kid": f"{last['kid']:.4f}" if last else "-"})
        progress.close()
        return run_folder.write_summary(self)

    def _train_step(self) -> dict[str, float]:
        cfg, B, accum = self.cfg, self.cfg.optim.batch_size, self.cfg.optim.grad_accum
        apply_gp = cfg.loss.gp_every > 0 and self.step % cfg.loss.gp_every == 0
        totals = {k: torch.zeros((), device=self.device) for k in ("d_loss", "recon_loss", "gp", "g_loss")}

        self.D.requires_grad_(True)
        self.opt_d.zero_grad(set_to_none=True)
        for _ in range(accum):
            z = torch.randn(B, cfg.model.d_latent, device=self.device)
            reals = self._real_batch(B).requires_grad_(apply_gp)
            with self._autocast():
                with torch.no_grad():
                    fakes = self.G(z)
                if apply_gp:  # apart: the penalty's double backward then spans the reals alone
                    fake_out, real_out = self.D(self._augment(fakes)), self.D(self._augment(reals), aux=True)
                else:
                    fake_out, real_out = self.D.judge(self._augment(fakes), self._augment(reals))
                recon = reconstruction_loss(real_out)
                d_loss = cfg.loss.hinge_weight * discriminator_loss(real_out, fake_out) \
                    + cfg.loss.recon_weight * recon
            if apply_gp:
                gp = gradient_penalty(reals, real_out, weight=cfg.loss.gp_weight)
                d_loss = d_loss + gp
                totals["gp"] += gp.detach()
            (d_loss / accum).backward()
            totals["d_loss"] += d_loss.detach()
            totals["recon_loss"] += recon.detach()
        self.opt_d.step()

        self.D.requires_grad_(False)
        self.opt_g.zero_grad(set_to_none=True)
        for _ in range(accum):
            z = torch.randn(B, cfg.model.d_latent, device=self.device)
            with self._autocast():
                fake_out = self.D(self._augment(self.G(z)))
                g_loss = generator_loss(fake_out)
            (g_loss / accum).backward()
            totals["g_loss"] += g_loss.detach()
        self.opt_g.step()
        means = (torch.stack(list(totals.values())) / accum).tolist()  # one device sync per step
        return dict(zip(totals, means))

    def _real_batch(self, batch_size: int) -> torch.Tensor:
        index = torch.randint(len(self.data.images), (batch_size,))
        batch = to_tensor(self.data.images[index.numpy()], self.cfg.model.channels)  # in [-1, 1]
        if self.value_range != (-1.0, 1.0):
            batch = batch.add_(1).div_(2)  # [0, 1]
        return batch.to(self.device, non_blocking=True)

    def _augment(self, images: torch.Tensor) -> torch.Tensor:
        return maybe_augment(images, self.cfg.loss.augment_prob, self.cfg.loss.augment)

    def _update_ema(self) -> None:
        """The schedule of EMAConfig (copy, or average, or neither) for the step just taken."""
        ema, step = self.cfg.ema, self.step
        if ema.copy_every and step <= ema.copy_until and step % ema.copy_every == ema.copy_offset:
            weight = 1.0
        elif step >= ema.start and step % ema.every == ema.offset:
            weight = 1.0 - ema.beta
        else:
            return
        with torch.no_grad():
            for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters()):
                p_ema.lerp_(p, weight)

    def _autocast(self):
        """precision bf16: autocast (D and the U-Net in bfloat16; G keeps its LSTM, update net and rule in float32)."""
        if self.cfg.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # -- evaluation, pictures and checkpoints -----------------------------------------------------------

    @property
    def best(self) -> dict[str, Any] | None:
        """The best evaluation so far by fid.metric (the one best.pt holds)."""
        return best_evaluation(self.evaluations, self.cfg.fid.metric)

    def _evaluate(self) -> Scores:
        """Score the EMA generator, in float32 whatever the training precision, and draw its pictures."""
        cfg, metric = self.cfg, self.cfg.fid.metric
        previous = self.best
        sample = latent_sampler(self.G_ema, cfg.seed, self.step, self.device, self.value_range)
        scores = self.evaluator.scores(sample, cfg.fid.num_images, self.data.images, self.data.fingerprint)
        self.evaluations.append({"step": self.step, **scores.to_dict()})
        self._picture_bytes = self._draw_pictures()
        self.folder.log({"step": self.step, **scores.to_dict(), "fid_calibrated": self.evaluator.calibrated,
                      "time": round(time.time(), 3)})
        if previous is None or getattr(scores, metric) < previous[metric]:
            self.folder.save_best(run_folder.state(self))
        best = self.best
        log.info("step %d: %s (best %s %.4g at step %d)", self.step, describe(scores.to_dict(), self.evaluator.label),
                 metric.upper(), best[metric], best["step"])
        return scores

    def _draw_pictures(self) -> dict[str, bytes]:
        """The sample grid, painting strip and GIF of the EMA generator for fixed latents, written to the run
        folder; returned encoded, for a caller that uploads them."""
        cfg = self.cfg
        latents = torch.randn(max(cfg.pictures.samples, cfg.pictures.paintings), cfg.model.d_latent,
                              generator=torch.Generator().manual_seed(cfg.seed + 1)).to(self.device)
        drawn = pictures.render(self.G_ema, latents, cfg.pictures.samples, cfg.pictures.paintings,
                                self.value_range, title=f"step {self.step}")
        tag = f"{self.step:08d}"
        self._pictures = {"grid": self.folder.write(f"samples/grid-{tag}.png", drawn["grid.png"]),
                          "strip": self.folder.write(f"painting/strip-{tag}.png", drawn["painting.png"]),
                          "gif": self.folder.write(f"painting/painting-{tag}.gif", drawn["painting.gif"])}
        return {"grid": drawn["grid.png"], "strip": drawn["painting.png"], "gif": drawn["painting.gif"]}

    def _evaluation(self, scores: Scores, losses: dict[str, float], images_per_s: float) -> Evaluation:
        return Evaluation(step=self.step, scores=scores, best=dict(self.best), calibrated=self.evaluator.calibrated,
                          losses=dict(losses), images_per_s=images_per_s, checkpoint=self.last_checkpoint,
                          best_checkpoint=self.folder.best_checkpoint, wall_time_s=self.wall_time_s,
                          pictures=self._pictures,
                          picture_bytes=self._picture_bytes)

    def _save_latest(self) -> None:
        self.last_checkpoint = self.folder.save_latest(self.step, run_folder.state(self))
        self.folder.tidy(self.cfg.checkpoint.keep)  # the new checkpoint is recorded, whatever happens here


def real_features_uri(out: str) -> str | None:
    """Where runs under ``out`` share real features besides the local cache: the bucket's .fpa-cache/fid."""
    return f"s3://{out[len('s3://'):].split('/')[0]}/.fpa-cache/fid" if storage.is_s3(out) else None


def _training_data(config: TrainConfig, saved: dict[str, Any] | None, resume_from: str | None) -> ImageSet:
    """The run's images, once they are known to train: at least two, and those a resumed run trained on."""
    data = load_images(config.data.dataset, config.data.resolution)
    if data.skipped:
        log.warning("%d unreadable images were skipped in %s", data.skipped, data.source)
    if len(data.images) < 2:
        raise CannotTrainError(f"{data.source} holds {len(data.images)} readable image(s); training needs at "
                               "least 2 (its evaluations compare sets of images)")
    if saved and saved["dataset"]["fingerprint"] != data.fingerprint:
        raise CannotTrainError(f"the dataset changed since {resume_from} was written (fingerprint "
                               f"{saved['dataset']['fingerprint'][:12]} then, {data.fingerprint[:12]} now); "
                               "resume with the original data")
    return data


def prepare_real_features(config: TrainConfig, out: str, device: str = "auto") -> None:
    """Compute (or find) the real set's features into the caches that a run in ``out`` reads, so that many
    runs starting at once (a sweep's first trials) need not each compute them."""
    data = load_images(config.data.dataset, config.data.resolution)
    _evaluator(config, _device(device), real_features_uri(out)).real_set(data.images, data.fingerprint)


def _evaluator(config: TrainConfig, device: torch.device, cache_uri: str | None) -> Evaluator:
    return Evaluator(backbone=config.fid.backbone, dims=config.fid.dims, image_format=config.fid.image_format,
                     batch_size=config.fid.batch_size, device=device, cache_uri=cache_uri)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CannotTrainError(f"device {name!r}: this machine has no CUDA GPU; use device: cpu or auto")
    return device


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
