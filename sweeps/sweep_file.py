"""Sweep files: one YAML file per dataset, read and checked into a ``sweeps.space.SweepSpec``.

A sweep file lives in ``sweeps/configs/<name>.yaml`` and is found by name (``load_sweep("metfaces")``,
see ``sweep_names()``), or anywhere else by path (``load_sweep("my-sweep.yaml")``)::

    dataset: metfaces        # the training dataset (a name, folder or zip); sets data.dataset
    base: metfaces           # the training config trials start from: packaged (fpa_core/configs/) or a YAML file
    num_trials: 20           # optional: how many trials (the launcher's --num-trials wins)
    pruner: hyperband        # optional: the launcher's --pruner, --warmup, --patience and --metric when not given
    warmup: 0
    metric: kid
    fid_backbone: auto       # optional: auto picks the calibrated Inception where its weights are, else
                             # inception-random, and says so; inception / inception-random force one
    first: table3            # optional: the first trial to run, table3 (the dataset's Table 3 row) or
                             # base (the base config as it is); omit it to let the sampler choose from the start
    fixed:                   # dotted TrainConfig paths set in every trial
      optim.batch_size: 20
      steps: 300000
    space:                   # dotted TrainConfig paths, sampled in this order; a sampled value overrides fixed
      model.input_generator: [v1, v2]                                      # categorical
      model.d_in: {values: [8, 16, 32], if: {model.input_generator: v2}}   # categorical, when the condition holds
      optim.lr: {low: 1.0e-4, high: 4.0e-4, log: true}                     # float
      model.num_layers: {low: 1, high: 3, step: 1}                         # int: low, high (and step) are ints
    profiles:                # named variants of this file: load_sweep(name, profile="demo")
      demo:
        fixed: {steps: 150}  # fixed entries are merged into the file's; any other key replaces the file's
      ablation:              # an ablation grid instead of a search: one axis at a time around the fixed config
        grid:                # (the centre cell), each cell x each seed once, no pruning; replaces space and first
          model.rule: [additive, oja]
          model.steps: [8, 4]
        seeds: 3             # seed = 0, 1, 2 for every cell
    stages:                  # the U-Net refinement stage's own knobs: load_sweep(name, stage="unet")
      unet:
        fixed: {unet.blocks: 2}              # merged into the (profiled) fixed entries
        space: {unet.dim: [48, 64]}          # replaces the FPA's space; no first trial

A condition ``if: {param: value or [values]}`` names categorical parameters that come earlier in
``space``; a parameter is sampled only when all of them hold, so a trial carries its active parameters
only (a v1 trial has no ``model.d_in``). A range entry also takes ``if``.

``load_sweep`` checks the whole file before anything runs and raises ConfigError naming every bad
entry: unknown keys and parameters, empty choices, bad conditions and ranges, and every categorical
value and range bound the training config cannot take (each is tried in a full TrainConfig).
"""

from __future__ import annotations

import difflib
import logging
from pathlib import Path
from typing import Any


from fpa_core.config import ConfigError, field_paths, read_mapping
from fpa_core.metrics import BACKBONES, METRICS
from fpa_core.train.config import TrainConfig, packaged_configs
from sweeps.pruning import PRUNERS
from sweeps.space import LAUNCH_KEYS, Param, SweepSpec, is_number

logger = logging.getLogger(__name__)

FIRST_CHOICES = ("table3", "base")
FID_BACKBONES = ("auto", *BACKBONES)  # auto: the calibrated one where its weights are
_PROFILE_KEYS = ("dataset", "base", "first", *LAUNCH_KEYS, "fid_backbone", "fixed", "space", "grid", "seeds")
_FILE_KEYS = (*_PROFILE_KEYS, "profiles", "stages")
STAGES = ("fpa", "unet")
_RANGE_KEYS = ("low", "high", "log", "step")
_ENTRY_KEYS = ("values", *_RANGE_KEYS, "if")
_FIELD_PATHS = frozenset(field_paths(TrainConfig))


def spec_from_dict(data: dict[str, Any]) -> SweepSpec:
    """The inverse of ``SweepSpec.to_dict`` (a sweep saved with its profile applied)."""
    body = {key: value for key, value in data.items() if key not in ("name", "profile") and value is not None}
    return _parse(body, data["name"], data.get("profile"), f"sweep {data['name']}")


_CONFIGS_DIR = Path(__file__).resolve().parent / "configs"


def sweep_names() -> list[str]:
    """The packaged sweeps, by name (``sweeps/configs/<name>.yaml``).

    Found next to this file rather than through ``importlib.resources``, which cannot list a package
    that an older editable install registered as a namespace package.
    """
    return sorted(p.stem for p in _CONFIGS_DIR.glob("*.yaml"))


def load_sweep(name_or_path: str, profile: str | None = None, stage: str = "fpa") -> SweepSpec:
    """Read and check a sweep, a packaged name (see ``sweep_names()``) or a YAML file, with ``profile`` applied,
    and for ``stage="unet"`` the file's U-Net space in place of the FPA's.

    Raises ConfigError naming every problem before anything runs.
    """
    if name_or_path in sweep_names():
        text, name = (_CONFIGS_DIR / f"{name_or_path}.yaml").read_text(), name_or_path
    elif Path(name_or_path).is_file():
        text, name = Path(name_or_path).read_text(), Path(name_or_path).stem
    else:
        raise ConfigError([f"{name_or_path!r}: neither a packaged sweep ({', '.join(sweep_names())}) "
                          "nor a YAML file"], "sweep")
    source = f"sweep {name}" + (f" (profile {profile})" if profile else "")
    data = read_mapping(text, name_or_path, source, ", ".join(_FILE_KEYS))
    spec = _parse(_apply_stage(_apply_profile(data, profile, source), stage, source), name, profile, source)
    if spec.grid is not None:
        logger.info("%s: an ablation of %d cells x %d seeds over base %s on %s", source, len(spec.cells()),
                    spec.seeds, spec.base, spec.dataset)
    else:
        logger.info("%s: %d parameters over base %s on %s, first trial: %s", source, len(spec.params), spec.base,
                    spec.dataset, spec.first or "sampled")
    return spec


def _apply_stage(data: dict[str, Any], stage: str, source: str) -> dict[str, Any]:
    """The file without its stages; for stage unet, its ``stages.unet`` fixed entries merged and space taken."""
    stages = data.get("stages") or {}
    out = {key: value for key, value in data.items() if key != "stages"}
    if stage == "fpa":
        return out
    if stage not in STAGES:
        raise ConfigError([f"stage {stage!r}: unknown; choose one of {', '.join(STAGES)}"], source)
    override = stages.get(stage) if isinstance(stages, dict) else None
    if not isinstance(override, dict) or not isinstance(override.get("space"), dict):
        raise ConfigError([f"stages.{stage}: this sweep has no {stage} stage; add stages: {{{stage}: {{space: ...}}}}"],
                         source)
    bad = [f"stages.{stage}.{key}: unknown key; a stage has fixed and space" for key in override
           if key not in ("fixed", "space")]
    if bad:
        raise ConfigError(bad, source)
    out["fixed"] = {**(out.get("fixed") or {}), **(override.get("fixed") or {})}
    out["space"] = override["space"]
    out.pop("first", None)  # the FPA's first trial means nothing to the U-Net
    return out


def _apply_profile(data: dict[str, Any], profile: str | None, source: str) -> dict[str, Any]:
    """The file without its profiles, with ``profile`` applied: fixed entries merged, other keys replaced."""
    profiles = data.get("profiles") or {}
    if not isinstance(profiles, dict):
        raise ConfigError(["profiles: expected a mapping of profile name -> overrides, "
                          "e.g. demo: {fixed: {steps: 150}}"], source)
    out = {key: value for key, value in data.items() if key != "profiles"}
    if profile is None:
        return out
    if profile not in profiles:
        raise ConfigError([f"profile {profile!r}: unknown; this sweep has "
                          f"{', '.join(map(str, profiles)) or 'no profiles'}"], source)
    overrides = profiles[profile]
    if not isinstance(overrides, dict):
        raise ConfigError([f"profiles.{profile}: expected a mapping of sweep file keys, got {overrides!r}"], source)
    bad = [f"profiles.{profile}.{key}: unknown key; a profile overrides {', '.join(_PROFILE_KEYS)}"
           for key in overrides if key not in _PROFILE_KEYS]
    if bad:
        raise ConfigError(bad, source)
    if "grid" in overrides:  # an ablation profile: its grid takes the place of the file's space and first trial
        out.pop("space", None)
        out.pop("first", None)
    for key, value in overrides.items():
        merge_fixed = key == "fixed" and isinstance(value, dict) and isinstance(out.get("fixed"), dict)
        out[key] = {**out["fixed"], **value} if merge_fixed else value
    return out


def _parse(data: dict[str, Any], name: str, profile: str | None, source: str) -> SweepSpec:
    """A SweepSpec from a sweep mapping (profile applied), or ConfigError naming every bad entry."""
    errors = [f"{key}: unknown key; a sweep file has {', '.join(_FILE_KEYS)}" for key in data if key not in _FILE_KEYS]
    dataset, base = _text(data, "dataset", errors), _text(data, "base", errors)
    if base and base not in packaged_configs() and not Path(base).is_file():
        errors.append(f"base: {base!r} is neither a packaged training config ({', '.join(packaged_configs())}) "
                      "nor a YAML file")
        base = None
    first = data.get("first")
    if first is not None and first not in FIRST_CHOICES:
        errors.append(f"first: {first!r} is not one of {', '.join(FIRST_CHOICES)}; omit it to let the sampler "
                      "choose the first trial")
        first = None
    launch = {key: data.get(key) for key in LAUNCH_KEYS}
    for key, low in (("num_trials", 1), ("warmup", 0), ("patience", 1)):
        value = launch[key]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            errors.append(f"{key}: expected an integer >= {low}, got {value!r}")
            launch[key] = None
    for key, choices in (("pruner", PRUNERS), ("metric", METRICS)):
        if launch[key] is not None and launch[key] not in choices:
            errors.append(f"{key}: {launch[key]!r} is not one of {', '.join(choices)}")
            launch[key] = None
    fid_backbone = data.get("fid_backbone")
    if fid_backbone is not None and fid_backbone not in FID_BACKBONES:
        errors.append(f"fid_backbone: {fid_backbone!r} is not one of {', '.join(FID_BACKBONES)}")
        fid_backbone = None
    fixed = _parse_fixed(data.get("fixed"), errors)
    grid, seeds = None, None
    if "grid" in data or "seeds" in data:
        grid, seeds = _parse_grid(data, launch, first, errors)
        params = []
    else:
        params = _parse_space(data.get("space"), errors)
    spec = SweepSpec(name, dataset or "", base or "", fixed, params, first, profile, fid_backbone=fid_backbone,
                     grid=grid, seeds=seeds, **launch)
    if dataset and base and grid is not None:
        _check_cells(spec, launch, errors)
    elif dataset and base:
        _check_values(spec, errors)
    if first and not errors:
        _check_first(spec, errors)
    if errors:
        raise ConfigError(errors, source)
    return spec


def _text(data: dict[str, Any], key: str, errors: list[str]) -> str | None:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        errors.append(f"{key}: required, a non-empty string; got {value!r}")
        return None
    return value


def _parse_fixed(fixed: Any, errors: list[str]) -> dict[str, Any]:
    if fixed is None:
        return {}
    if not isinstance(fixed, dict):
        errors.append(f"fixed: expected a mapping of dotted TrainConfig paths to values, got {fixed!r}")
        return {}
    good = {}
    for key, value in fixed.items():
        if key == "data.dataset":
            errors.append("fixed.data.dataset: set the dataset with the top-level dataset: key")
        elif key not in _FIELD_PATHS:
            errors.append(f"fixed.{key}: unknown parameter; {_did_you_mean(str(key))}")
        else:
            good[key] = value  # the known entries only, so that the checks of the space can still run
    return good


def _parse_space(space: Any, errors: list[str]) -> list[Param]:
    if not isinstance(space, dict) or not space:
        errors.append(f"space: expected a mapping of dotted TrainConfig paths to choices, "
                      f"e.g. model.d_hidden: [1024, 2048]; got {space!r}")
        return []
    names = [str(name) for name in space]
    parsed: dict[str, Param] = {}
    for index, (name, entry) in enumerate(zip(names, space.values())):
        param = _parse_entry(name, entry, names[:index], names, parsed, errors)
        if param is not None:
            parsed[name] = param
    return list(parsed.values())


def _parse_entry(name: str, entry: Any, earlier: list[str], names: list[str], parsed: dict[str, Param],
                 errors: list[str]) -> Param | None:
    """One ``space`` entry as a Param, or None with its problems appended to ``errors``."""
    where, n_errors = f"space.{name}", len(errors)
    if name not in _FIELD_PATHS:
        errors.append(f"{where}: unknown parameter; {_did_you_mean(name)}")
    if isinstance(entry, list):
        entry = {"values": entry}
    if not isinstance(entry, dict):
        errors.append(f"{where}: expected a list of values, {{values: [...], if: ...}} or {{low: ..., high: ...}}, "
                      f"got {entry!r}; a single value belongs under fixed")
        return None
    unknown = [key for key in entry if key not in _ENTRY_KEYS]
    if unknown:
        errors.append(f"{where}: unknown keys {', '.join(map(str, unknown))}; an entry has values "
                      f"(a choice) or low, high, log, step (a range), and if")
    condition = _parse_condition(where, entry.get("if"), earlier, names, parsed, errors)
    if "values" in entry and any(key in entry for key in _RANGE_KEYS):
        errors.append(f"{where}: both values and a range; keep one")
        return None
    if "values" in entry:
        param = _categorical(where, name, entry["values"], condition, errors)
    elif "low" in entry or "high" in entry:
        param = _range(where, name, entry, condition, errors)
    else:
        errors.append(f"{where}: no values and no low/high; give a list of values or a range {{low: ..., high: ...}}")
        return None
    return param if len(errors) == n_errors else None


def _categorical(where: str, name: str, values: Any, condition: dict[str, list[Any]] | None,
                 errors: list[str]) -> Param:
    if not isinstance(values, list) or not values:
        errors.append(f"{where}: empty choice; list at least one value, or drop the entry"
                      if values == [] else f"{where}: values: expected a list, got {values!r}")
        return Param(name, "categorical", [], condition=condition)
    for value in values:
        if value is not None and not isinstance(value, (bool, int, float, str)):
            errors.append(f"{where}: {value!r} cannot be a choice: Optuna samples only null, booleans, numbers "
                          "and strings; set such a value under fixed")
    duplicates = sorted({repr(v) for i, v in enumerate(values) if v in values[:i]})
    if duplicates:
        errors.append(f"{where}: {', '.join(duplicates)} listed more than once; list each value once")
    return Param(name, "categorical", list(values), condition=condition)


def _range(where: str, name: str, entry: dict[str, Any], condition: dict[str, list[Any]] | None,
           errors: list[str]) -> Param:
    low, high, log, step = entry.get("low"), entry.get("high"), entry.get("log", False), entry.get("step")
    bad = [f"{key}: expected a number, got {entry.get(key)!r}"
           + (" (YAML reads 1e-4 without a dot as a string: write 1.0e-4)" if isinstance(entry.get(key), str) else "")
           for key in ("low", "high") if not is_number(entry.get(key))]
    if step is not None and not (is_number(step) and step > 0):
        bad.append(f"step: expected a positive number, got {step!r}")
    if not isinstance(log, bool):
        bad.append(f"log: expected true or false, got {log!r}")
    errors.extend(f"{where}: {message}" for message in bad)
    if not bad:
        if low >= high:
            errors.append(f"{where}: low ({low}) >= high ({high}); make low < high, or fix the value under fixed")
        if log and low <= 0:
            errors.append(f"{where}: a log range needs low > 0, got {low}")
        if log and step is not None:
            errors.append(f"{where}: log and step together: Optuna samples a log range without steps; drop one")
    kind = "int" if all(isinstance(v, int) for v in (low, high, step or 1)) and not bad else "float"
    return Param(name, kind, low=low, high=high, log=bool(log), step=step, condition=condition)


def _parse_condition(where: str, condition: Any, earlier: list[str], names: list[str], parsed: dict[str, Param],
                     errors: list[str]) -> dict[str, list[Any]] | None:
    if condition is None:
        return None
    if not isinstance(condition, dict) or not condition:
        errors.append(f"{where}: if: expected a mapping of an earlier categorical parameter to a value or a "
                      f"list of values, e.g. {{model.input_generator: v2}}; got {condition!r}")
        return None
    out: dict[str, list[Any]] = {}
    for key, allowed in condition.items():
        key, allowed = str(key), allowed if isinstance(allowed, list) else [allowed]
        target = parsed.get(key)
        if key not in names:
            errors.append(f"{where}: if: {key} is not in the space; add it above, or drop the condition")
        elif key not in earlier:
            errors.append(f"{where}: if: {key} is not sampled before it; move {key} above it in the space")
        elif target is not None and target.kind != "categorical":
            errors.append(f"{where}: if: {key} is a range; a condition can only name a categorical parameter")
        elif target is not None and (not allowed or any(v not in target.values for v in allowed)):
            errors.append(f"{where}: if: {key} never takes {allowed!r}; it takes {target.describe()}")
        out[key] = allowed
    return out


def _check_values(spec: SweepSpec, errors: list[str]) -> None:
    """The base with the fixed entries must build, and then every choice and range bound on its own."""
    try:
        spec.trial_config({})
    except ConfigError as e:
        errors.extend(f"base {spec.base} + dataset + fixed: {message}" for message in e.errors)
        return
    for param in spec.params:
        candidates = param.values if param.kind == "categorical" else [param.low, param.high]
        for value in candidates:
            try:
                spec.trial_config({param.name: value})
            except ConfigError as e:
                errors.append(f"space.{param.name}: {value!r} cannot be used: {'; '.join(e.errors)}")


def _parse_grid(data: dict[str, Any], launch: dict[str, Any], first: str | None, errors: list[str]
                ) -> tuple[dict[str, list[Any]], int]:
    """An ablation's grid and seeds; it runs every cell to the same budget, so it takes no pruner and no first."""
    grid, seeds = data.get("grid"), data.get("seeds", 1)
    if "space" in data:
        errors.append("space: an ablation (grid) samples nothing; drop space, or drop grid and seeds for a search")
    if not isinstance(grid, dict) or not grid:
        errors.append(f"grid: expected a mapping of dotted TrainConfig paths to lists of values, e.g. "
                      f"model.rule: [additive, oja]; got {grid!r}")
        grid = {}
    good = {}
    for axis, values in grid.items():
        if axis not in _FIELD_PATHS:
            errors.append(f"grid.{axis}: unknown parameter; {_did_you_mean(str(axis))}")
        elif axis == "seed":
            errors.append("grid.seed: give the number of seeds with seeds: N instead")
        elif not isinstance(values, list) or not values:
            errors.append(f"grid.{axis}: expected a non-empty list of values, got {values!r}")
        else:
            good[axis] = values
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        errors.append(f"seeds: expected an integer >= 1, got {seeds!r}")
        seeds = 1
    if launch["pruner"] not in (None, "none"):
        errors.append(f"pruner: {launch['pruner']!r}: an ablation runs every cell to the same budget; "
                      "drop pruner (or set it to none)")
    launch["pruner"] = "none"
    if first is not None:
        errors.append("first: an ablation runs its centre cell; drop first")
    return good, seeds


def _check_cells(spec: SweepSpec, launch: dict[str, Any], errors: list[str]) -> None:
    """Every cell must build; the number of trials is the number of cells times the seeds."""
    try:
        cells = spec.cells()
    except ConfigError as e:
        errors.extend(f"base {spec.base} + dataset + fixed: {message}" for message in e.errors)
        return
    for name, overrides in cells:
        try:
            spec.trial_config(overrides)
        except ConfigError as e:
            errors.append(f"grid: cell {name} cannot be used: {'; '.join(e.errors)}")
    runs = len(cells) * spec.seeds
    if launch["num_trials"] not in (None, runs):
        errors.append(f"num_trials: {launch['num_trials']}: the grid runs {len(cells)} cells x {spec.seeds} seeds "
                      f"= {runs} trials; drop num_trials")
    spec.num_trials = runs


def _check_first(spec: SweepSpec, errors: list[str]) -> None:
    """The first trial's values must lie in the space, or Optuna could not enqueue them."""
    try:
        first = spec.first_params()
    except ConfigError as e:
        errors.extend(e.errors)
        return
    by_name = {param.name: param for param in spec.params}
    errors.extend(f"first: {spec.first} gives {name} = {value!r}, which the space does not include "
                  f"({by_name[name].describe()}); add it to the space, or omit first"
                  for name, value in first.items() if not by_name[name].contains(value))


def _did_you_mean(name: str) -> str:
    close = difflib.get_close_matches(name, sorted(_FIELD_PATHS), n=1)
    return (f"did you mean {close[0]}?" if close
            else "name a TrainConfig field by its dotted path, e.g. model.d_hidden or optim.lr")
