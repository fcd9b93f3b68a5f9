"""Simulated trials: a sweep in which everything is real but the training (``--simulate SOURCE``).

    python sweeps/launch.py --dataset digits --simulate model --num-trials 200 --max-concurrent 16
    python sweeps/launch.py --dataset digits --simulate digits-20261203-145037     # replay a finished sweep

Ray Tune, the Optuna study and its pruner, MLflow's runs, the sweep's records, ``fpa-status`` and ``--resume``
are the real ones. Each trial replays a learning curve instead of training (``sweeps.simulated_trial``): it
sleeps ``--step-seconds`` a step and, at each evaluation step of its config, reports the scores a real trial
reports. This module makes the curves, without side effects:

    a finished sweep   the recorded trial nearest to the sampled config in parameters; its evaluations are
                       mapped onto this sweep's steps by the fraction of training done (a recorded trial that
                       was pruned stays at its last score after it)
    model              a parametric curve per config, from the curve model fitted to recorded sweeps
                       (sweeps/configs/curve-model.json; docs/simulation.md says how): a floor, a ratio and a
                       time constant per score, drawn per config from their fitted spread, and each
                       evaluation's measured noise

A simulated sweep is labelled so everywhere: summary.json's ``simulated``, the MLflow tag ``fpa.simulated`` on
its parent and trial runs, ``fpa-status``, and the registry refuses to promote one of its trials.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fpa_core.metrics import SCORES
from fpa_core.train.config import TrainConfig
from sweeps.sweep import SweepNotFound, SweepSettings, read_summary

MODEL = "model"
MODEL_FILE = Path(__file__).resolve().parent / "configs" / "curve-model.json"
RISING = ("precision", "recall")  # the scores that improve upwards; FID and KID fall


@dataclass(frozen=True)
class Simulation:
    """What a simulated trial replays: its evaluations by step, and the seconds a step takes."""

    source: str  # "model", or the name of the sweep it replays
    evaluations: tuple[dict[str, float], ...]  # {"step", "fid", "kid", "kid_std", "precision", "recall"}, by step
    step_seconds: float
    replays: str | None = None  # the recorded trial a replay follows


def simulator(settings: SweepSettings, storage_root: str) -> Replay | CurveModel | None:
    """A sweep's curves: None for a real sweep; the fitted model, or a finished sweep of the storage replayed."""
    if not settings.simulate:
        return None
    if settings.simulate == MODEL:
        return CurveModel.packaged(settings.seed)
    return Replay.from_summary(read_summary(storage_root, settings.simulate))


def source_problem(source: str, storage_root: str) -> str | None:
    """What is wrong with ``--simulate SOURCE``, or None."""
    if source == MODEL:
        return None if MODEL_FILE.is_file() else f"--simulate model: the curve model {MODEL_FILE} is missing"
    try:
        summary = read_summary(storage_root, source)
    except SweepNotFound:
        return (f"--simulate {source}: neither model nor a finished sweep in {storage_root} (a sweep to replay needs "
                "its summary.json)")
    if not any(t.get("evaluations") for t in summary["trials"]):
        return f"--simulate {source}: that sweep has no trial with an evaluation to replay"
    return None


def evaluation_steps(config: TrainConfig) -> list[int]:
    """The steps a trial of ``config`` evaluates at, as the trainer does: every ``fid.every`` and the last."""
    steps = list(range(config.fid.every, config.steps + 1, config.fid.every))
    return steps if steps and steps[-1] == config.steps else [*steps, config.steps]


class Replay:
    """The curves of a finished sweep's trials, handed to the sampled configs nearest to theirs."""

    def __init__(self, name: str, trials: list[dict[str, Any]]):
        self.name = name
        self.trials = [t for t in trials if t.get("evaluations")]
        if not self.trials:
            raise ValueError(f"sweep {name} has no trial with an evaluation to replay")

    @classmethod
    def from_summary(cls, summary: dict[str, Any]) -> Replay:
        """A finished sweep's trials, from its summary.json."""
        planned = planned_steps(summary)
        return cls(summary["name"], [{**t, "planned_steps": planned} for t in summary["trials"]])

    def nearest(self, params: dict[str, Any]) -> dict[str, Any]:
        return min(self.trials, key=lambda t: (parameter_distance(params, t["params"]), t["trial_id"]))

    def simulation(self, params: dict[str, Any], config: TrainConfig, step_seconds: float) -> Simulation:
        trial = self.nearest(params)
        recorded = sorted(trial["evaluations"], key=lambda e: e["step"])
        planned = trial["planned_steps"]
        evaluations = []
        for step in evaluation_steps(config):
            at = step / config.steps * planned  # the same fraction of the recorded trial's training
            evaluations.append({"step": step, **_interpolate(recorded, at)})
        return Simulation(self.name, tuple(evaluations), step_seconds, trial["trial_id"])


class CurveModel:
    """Parametric curves, one per config, from a fitted model (``fit``): falling scores follow
    floor * (1 + ratio * exp(-f / tau)) and rising ones ceiling * (1 - ratio * exp(-f / tau)), with f the
    fraction of training done; log floor (or ceiling), log ratio and log tau are drawn per config from their
    fitted normal spread, the floors of all scores from one draw (a config that is good is good on every
    score), and each evaluation carries noise of the measured relative std."""

    def __init__(self, fitted: dict[str, Any], seed: int = 0):
        self.fitted, self.seed = fitted, seed

    @classmethod
    def packaged(cls, seed: int = 0) -> CurveModel:
        return cls(json.loads(MODEL_FILE.read_text()), seed)

    def simulation(self, params: dict[str, Any], config: TrainConfig, step_seconds: float) -> Simulation:
        draw = random.Random(_digest(params, self.seed))
        quality = draw.gauss(0.0, 1.0)  # shared: the floors of every score
        curves = {}
        for metric, fit in self.fitted["metrics"].items():
            sign = -1.0 if metric in RISING else 1.0
            level = math.exp(fit["log_level"][0] + sign * fit["log_level"][1] * quality)
            ratio = math.exp(draw.gauss(*fit["log_ratio"]))
            tau = math.exp(draw.gauss(*fit["log_tau"]))
            curves[metric] = (level, ratio, tau, sign)
        evaluations = []
        for step in evaluation_steps(config):
            noise = random.Random(_digest({**params, "step": step}, self.seed))
            fraction, scores = step / config.steps, {"step": step}
            for metric, (level, ratio, tau, sign) in curves.items():
                clean = level * (1 + ratio * math.exp(-fraction / tau)) if sign > 0 else \
                    level * (1 - ratio * math.exp(-fraction / tau))
                value = clean * (1 + self.fitted["noise"][metric] * noise.gauss(0.0, 1.0))
                scores[metric] = min(1.0, max(0.0, value)) if metric in RISING else max(value, 1e-6)
            scores["kid_std"] = scores["kid"] * self.fitted["kid_std_ratio"]
            evaluations.append(scores)
        return Simulation(MODEL, tuple(evaluations), step_seconds)


def parameter_distance(a: dict[str, Any], b: dict[str, Any]) -> float:
    """How far two sampled configs are: per parameter, 1 for a different choice (or one the other lacks), and
    for numbers the difference of their logarithms (of the values themselves where one is not positive)."""
    distance = 0.0
    for key in set(a) | set(b):
        x, y = a.get(key), b.get(key)
        if x == y:
            continue
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (x, y))
        if numbers and x > 0 and y > 0:
            distance += abs(math.log(x / y))
        elif numbers:
            distance += min(1.0, abs(x - y))
        else:
            distance += 1.0
    return distance


def _interpolate(recorded: list[dict[str, float]], step: float) -> dict[str, float]:
    """Each score at ``step`` between the recorded evaluations (the first before them, the last after them)."""
    if step <= recorded[0]["step"]:
        return {k: recorded[0][k] for k in SCORES if k in recorded[0]}
    for before, after in zip(recorded, recorded[1:]):
        if step <= after["step"]:
            w = (step - before["step"]) / (after["step"] - before["step"])
            return {k: before[k] + w * (after[k] - before[k]) for k in SCORES if k in before and k in after}
    return {k: recorded[-1][k] for k in SCORES if k in recorded[-1]}


def planned_steps(summary: dict[str, Any]) -> int:
    """The steps a recorded sweep's trials were to train: its best trial's config's, else the most any trained."""
    best = summary.get("best") or {}
    return int(best.get("config", {}).get("steps") or max(t["steps"] for t in summary["trials"]) or 1)


def _digest(values: dict[str, Any], seed: int) -> int:
    return int(hashlib.sha256(json.dumps([values, seed], sort_keys=True, default=str).encode()).hexdigest()[:16], 16)
