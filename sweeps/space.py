"""A sweep's model: what every trial shares, the axes it samples, and the trials it samples.

``SweepSpec`` is a checked sweep file (``sweeps.sweep_file.load_sweep`` reads one): a base training config,
the fixed entries and the space as dotted ``TrainConfig`` paths (``model.d_hidden``), and for an ablation its
grid and seeds. ``SweepSpec.sample`` asks an Optuna trial for one point of the space, define-by-run;
``SweepSpec.trial_config`` builds that point's ``TrainConfig``.

A trial's config on its way from the sweep file to the trainer, converted four times:

    1. the YAML file -> SweepSpec: fixed entries and axes as dotted paths     sweeps.sweep_file.load_sweep
    2. an Optuna trial -> its parameters, dotted paths -> values               SweepSpec.sample
    3. base config + dataset + fixed + parameters -> TrainConfig                SweepSpec.trial_config
    4. TrainConfig -> the trial's TrialTask, which Ray carries to the trainer   sweeps.trials.TrialBook.task
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any, Literal

import optuna
import yaml

from fpa_core.config import ConfigError, flatten, nested
from fpa_core.presets import PRESETS
from fpa_core.train.config import TrainConfig, build_config, config_dict

LAUNCH_KEYS = ("num_trials", "pruner", "warmup", "patience", "metric")  # defaults of the launcher's flags


@dataclass
class Param:
    """One axis of the space: a categorical choice or a numeric range, maybe conditional on earlier axes."""

    name: str  # a dotted TrainConfig path, e.g. model.d_hidden
    kind: Literal["categorical", "float", "int"]
    values: list[Any] | None = None  # categorical only
    low: float | None = None  # float and int only
    high: float | None = None
    log: bool = False
    step: float | None = None
    condition: dict[str, list[Any]] | None = None  # an earlier categorical parameter -> the values that enable this

    def active(self, sampled: dict[str, Any]) -> bool:
        """Whether this parameter is sampled, given the values sampled before it."""
        return self.condition is None or all(name in sampled and sampled[name] in allowed
                                             for name, allowed in self.condition.items())

    def suggest(self, trial: optuna.trial.BaseTrial) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, self.values)
        if self.kind == "int":
            return trial.suggest_int(self.name, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def contains(self, value: Any) -> bool:
        if self.kind == "categorical":
            return value in self.values
        return is_number(value) and self.low <= value <= self.high

    def describe(self) -> str:
        """The values this parameter takes, for messages."""
        if self.kind == "categorical":
            return ", ".join(map(repr, self.values))
        return f"{self.low} .. {self.high}"

    def to_dict(self) -> list[Any] | dict[str, Any]:
        """The entry as a sweep file writes it."""
        if self.kind == "categorical":
            if self.condition is None:
                return list(self.values)
            entry: dict[str, Any] = {"values": list(self.values)}
        else:
            entry = {"low": self.low, "high": self.high}
            if self.log:
                entry["log"] = True
            if self.step is not None:
                entry["step"] = self.step
        if self.condition is not None:
            entry["if"] = {name: list(allowed) for name, allowed in self.condition.items()}
        return entry


@dataclass
class SweepSpec:
    """A checked sweep file: what every trial shares, the space it samples, and the trial to run first."""

    name: str  # the file's stem
    dataset: str  # sets data.dataset
    base: str  # the training config the trials start from, packaged (by name) or a YAML file
    fixed: dict[str, Any]  # dotted path -> value, in every trial
    params: list[Param]  # in sampling order
    first: str | None = None  # table3, base, or None
    profile: str | None = None  # the profile applied to the file, if any
    num_trials: int | None = None  # the file's number of trials; the launcher's --num-trials wins
    pruner: str | None = None  # the file's pruner, evaluations before pruning and metric; the launcher's flags win
    warmup: int | None = None
    patience: int | None = None
    metric: str | None = None
    fid_backbone: str | None = None  # auto: calibrated where the Inception weights are, else inception-random
    grid: dict[str, list[Any]] | None = None  # an ablation: axis -> values, one axis at a time around the centre
    seeds: int | None = None  # an ablation's seeds per cell: 0 .. seeds - 1

    def cells(self) -> list[tuple[str, dict[str, Any]]]:
        """An ablation's cells, (name, overrides): the centre (the fixed config as it is), then each axis's
        values one at a time; a value equal to the centre's is the centre and not repeated."""
        return list(self._cells)

    @functools.cached_property
    def _cells(self) -> tuple[tuple[str, dict[str, Any]], ...]:  # built once per spec, not once per trial asked
        centre = flatten(self.trial_config({}))
        cells = [("centre", {})]
        for axis, values in (self.grid or {}).items():
            cells += [(f"{axis}={_cell_value(v)}", {axis: v}) for v in values if v != centre[axis]]
        return tuple(cells)

    def grid_space(self) -> dict[str, list[Any]]:
        """What Optuna's GridSampler runs once each: every cell with every seed."""
        return {"cell": [name for name, _ in self.cells()], "seed": list(range(self.seeds or 1))}

    def with_fixed(self, overrides: dict[str, Any]) -> SweepSpec:
        """The same sweep with more fixed entries (a nested or dotted mapping), checked like the file's."""
        spec = dataclasses.replace(self, fixed={**self.fixed, **flatten(overrides)})
        spec.trial_config({})  # ConfigError names a bad entry now, before any trial
        return spec

    def sample(self, trial: optuna.trial.BaseTrial) -> dict[str, Any]:
        """Define-by-run: suggest the active parameters in order; dotted path -> value. An ablation suggests
        its cell and seed (GridSampler picks one not run yet) and returns the cell's overrides and the seed."""
        if self.grid is not None:
            space = self.grid_space()
            cell = dict(self.cells())[trial.suggest_categorical("cell", space["cell"])]
            return {**cell, "seed": trial.suggest_categorical("seed", space["seed"])}
        sampled: dict[str, Any] = {}
        for param in self.params:
            if param.active(sampled):
                sampled[param.name] = param.suggest(trial)
        return sampled

    @functools.cached_property
    def base_data(self) -> dict[str, Any]:
        """The base config's mapping, read once per spec."""
        return config_dict(self.base)

    def trial_config(self, params: dict[str, Any]) -> TrainConfig:
        """The base config, then the dataset, the fixed entries and ``params``; ConfigError names bad fields."""
        overrides = nested({"data.dataset": self.dataset, **self.fixed, **params})
        return build_config(self.base_data, overrides, f"sweep {self.name} trial")

    def first_params(self) -> dict[str, Any] | None:
        """The first trial's values for the active parameters (for ``study.enqueue_trial``), or None.

        ``table3`` takes the dataset's Table 3 row (``fpa_core.presets.PRESETS``) and the base config
        with the fixed entries for what the row does not say (output tanh, T, ...); ``base`` takes
        the base config with the fixed entries alone.
        """
        if self.first is None:
            return None
        known = flatten(self.trial_config({}))
        if self.first == "table3":
            if self.dataset not in PRESETS:
                raise ConfigError([f"first: table3: dataset {self.dataset!r} has no Table 3 row (rows: "
                                  f"{', '.join(PRESETS)}); use first: base, or omit first"], f"sweep {self.name}")
            known.update({f"model.{key}": value for key, value in PRESETS[self.dataset].items()})
        chosen: dict[str, Any] = {}
        for param in self.params:
            if param.active(chosen):
                chosen[param.name] = known[param.name]
        return chosen

    def to_dict(self) -> dict[str, Any]:
        """The sweep as a mapping in the file format (with its name and profile), e.g. to log as YAML."""
        return {"name": self.name, "profile": self.profile, "dataset": self.dataset, "base": self.base,
                "first": self.first, **{key: getattr(self, key) for key in LAUNCH_KEYS},
                "fid_backbone": self.fid_backbone,
                "fixed": dict(self.fixed),
                **({"grid": dict(self.grid), "seeds": self.seeds} if self.grid is not None else
                   {"space": {param.name: param.to_dict() for param in self.params}})}


def _cell_value(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...").strip()


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
