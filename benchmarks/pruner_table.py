"""Pruners compared with statistical power: many seeded sweeps of replayed curves per pruner.

    python benchmarks/pruner_table.py --source model --trials 40 200 --concurrency 2 8 --seeds 20
    python benchmarks/pruner_table.py --source benchmarks/data/curves-demo.json ...   # recorded curves
    python benchmarks/pruner_table.py ... --driver --seeds 3 --pruners none successive-halving   # the real driver

Per seed, ``--trials`` configs of the digits space at the demo's size (--profile demo: 2,000 steps, an evaluation
every 250, KID) are drawn once by a seeded RandomSampler and enqueued in the same order for every pruner, so that
each pruner judges the same trials; each trial replays its curve (``sweeps.simulation``: the fitted curve model,
whose per-config draws and evaluation noise follow the seed, or a recorded sweep's summary.json). A pruner is
``NAME[:warmup=W][:rf=R][:patience=P][:z=Z]`` (z: margin-halving's margin).

By default the sweeps run in this process through the sweep's own trial book (``sweeps.study.OptunaBridge``: the
study, its pruner, the best-so-far reports, with MLflow off) on an event clock: ``--concurrency`` slots, a
trial's time its steps plus ``--eval-steps`` step-equivalents per evaluation, so that who has reached a step when
a decision is made is what a real sweep of that concurrency sees. ``--driver`` runs each sweep through the real
driver instead (Ray Tune, MLflow, ``--simulate``), at a few seconds a sweep, to confirm the replay.

Per pruner and size, mean ± std over seeds: trial-steps, fewer than no pruning (x), trial-time fewer (with the
evaluations' cost), regret (the best found minus the unpruned best, in units of the metric's noise std: one
evaluation's spread over latent seeds, measured), and how often the unpruned best trial survived (was not
pruned). Writes results.json under --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import json
import statistics
import time
from pathlib import Path

from fpa_core.metrics.noise import DEMO_NOISE_STD

# One evaluation's spread over 5 latent seeds of the demo's champion (BENCHMARKS.md, "Metric noise").
DEFAULT_PRUNERS = ("none", "median", "successive-halving", "successive-halving:rf=2", "successive-halving:rf=4",
                   "successive-halving:warmup=1", "hyperband", "median:patience=1", "wilcoxon",
                   "margin-halving", "margin-halving:z=1", "margin-halving:z=2", "margin-halving:rf=4:z=1.5")


@dataclasses.dataclass(frozen=True)
class Pruner:
    name: str
    warmup: int = 0
    reduction_factor: int = 3
    patience: int | None = None
    z: float | None = None  # margin-halving's margin (std of the difference)

    @classmethod
    def parse(cls, text: str) -> Pruner:
        name, *options = text.split(":")
        keys = {"warmup": "warmup", "rf": "reduction_factor", "patience": "patience", "z": "z"}
        values = {}
        for option in options:
            key, _, value = option.partition("=")
            number = value.replace(".", "", 1) if key == "z" else value
            if key not in keys or not number.isdigit():
                raise ValueError(f"pruner {text!r}: options are warmup=W, rf=R, patience=P, z=Z")
            values[keys[key]] = float(value) if key == "z" else int(value)
        return cls(name, **values)

    def __str__(self) -> str:
        options = [f"warmup={self.warmup}"] if self.warmup else []
        options += [f"rf={self.reduction_factor}"] if self.reduction_factor != 3 else []
        options += [f"patience={self.patience}"] if self.patience else []
        options += [f"z={self.z:g}"] if self.z is not None else []
        return ":".join([self.name, *options])


class _NoTracking:
    """The trial book's MLflow side, off: the replay measures the pruners, not the tracker."""

    def start_child(self, parent_id, sweep, name, params, tags=None) -> str:
        return f"run-{name}"

    trial_run = start_child

    def new_best(self, *args) -> None:
        pass

    def trial_ended(self, *args) -> None:
        pass


def draw(spec, count: int, seed: int) -> list[dict]:
    """``count`` configs of the space by a seeded RandomSampler, the base config first (as a sweep's first)."""
    import optuna

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    first = spec.first_params()
    return ([first] if first else []) + [spec.sample(study.ask()) for _ in range(count - bool(first))]


def replay(spec, configs: list[dict], pruner: Pruner, curves, concurrency: int, eval_steps: float, seed: int) -> dict:
    """One sweep of ``configs`` on an event clock, through the sweep's trial book: the trials' steps and states."""
    import optuna

    from sweeps.pruning import make_pruner
    from sweeps.study import OptunaBridge
    from sweeps.sweep import SweepSettings

    config = spec.trial_config({})
    settings = SweepSettings(name=f"replay-{pruner}-{seed}", storage="/replay", tracking_uri="", optuna_storage="memory",
                             num_trials=len(configs), pruner=pruner.name, warmup=pruner.warmup,
                             patience=pruner.patience, seed=seed, metric=config.fid.metric, simulate="replay")
    store = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=store, study_name=settings.name, direction="minimize",
                                sampler=optuna.samplers.RandomSampler(seed=seed),
                                pruner=make_pruner(pruner.name, pruner.warmup, config.fid.every, config.steps,
                                                   pruner.patience, pruner.reduction_factor, pruner.z))
    for params in configs:
        study.enqueue_trial(params)
    bridge = OptunaBridge(spec, study, store, _NoTracking(), "parent", settings, {"cpu": 1}, config, curves)
    events: list[tuple[float, int, str, dict, bool]] = []  # (time, order, Ray trial, result, last)
    started = 0

    def start(now: float) -> None:
        nonlocal started
        if started == len(configs):
            return
        ray_id = f"ray-{started}"
        started += 1
        task = bridge.new_trial(ray_id)
        for k, evaluation in enumerate(task.simulation.evaluations, start=1):
            last = k == len(task.simulation.evaluations)
            heapq.heappush(events, (now + evaluation["step"] + k * eval_steps, started * 1000 + k, ray_id,
                                    dict(evaluation), last))

    for _ in range(concurrency):
        start(0.0)
    stopped: set[str] = set()
    while events:
        now, _, ray_id, result, last = heapq.heappop(events)
        if ray_id in stopped:
            continue
        if bridge.report(ray_id, result) or last:
            if last:
                bridge.complete(ray_id, result, error=False)
            stopped.add(ray_id)
            start(now)
    records = sorted(bridge.records.values(), key=lambda r: r.number)
    return {"steps": [r.steps for r in records], "evaluations": [len(r.evaluations) for r in records],
            "states": [r.state for r in records], "best": [r.best_value for r in records]}


def through_driver(spec, configs: list[dict], pruner: Pruner, source: str, concurrency: int, seed: int,
                   out: Path) -> dict:
    """One sweep of ``configs`` through the real driver: Ray Tune, MLflow, the study on SQLite, --simulate."""
    from sweeps.driver import run_sweep
    from sweeps.study import open_store, open_study
    from sweeps.sweep import new_settings

    settings = new_settings(f"prune-{str(pruner).replace(':', '-').replace('=', '')}-{seed}",
                            storage=str(out / "storage"), tracking_uri=f"sqlite:///{out / 'mlflow.db'}",
                            num_trials=len(configs), pruner=pruner.name, warmup=pruner.warmup, patience=pruner.patience,
                            max_concurrent=concurrency, metric=spec.trial_config({}).fid.metric, seed=seed,
                            simulate=source, step_seconds=0.0005, cpus_per_trial=1 / 16)
    if pruner.reduction_factor != 3 or pruner.z is not None:
        raise ValueError("--driver runs the pruners a sweep offers: no rf or z option")
    config = spec.trial_config({})
    study = open_study(dataclasses.replace(spec, first=None), settings, config, open_store(settings))
    for params in configs:
        study.enqueue_trial(params)
    summary = run_sweep(spec, settings)
    trials = sorted(summary["trials"], key=lambda t: t["optuna_trial"])
    return {"steps": [t["steps"] for t in trials], "evaluations": [len(t["evaluations"]) for t in trials],
            "states": [t["state"] for t in trials], "best": [t["best_value"] for t in trials]}


def score(run: dict, full: dict, noise: float, eval_steps: float) -> dict:
    """A pruned sweep against the unpruned one of the same configs."""
    best_full = min(b for b in full["best"] if b is not None)
    winner = full["best"].index(best_full)
    found = min(b for b in run["best"] if b is not None)
    cost = lambda r: sum(r["steps"]) + eval_steps * sum(r["evaluations"])  # noqa: E731
    return {"fewer_steps": sum(full["steps"]) / sum(run["steps"]), "fewer_time": cost(full) / cost(run),
            "regret": (found - best_full) / noise, "survived": run["states"][winner] != "PRUNED",
            "trial_steps": sum(run["steps"])}


def mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="model", help="model, or a recorded sweep's summary.json")
    parser.add_argument("--trials", type=int, nargs="+", default=[40, 200])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[2, 8],
                        help="trials at once: the demo's 2, a MetFaces sweep's 8 GPUs")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--pruners", nargs="+", default=list(DEFAULT_PRUNERS))
    parser.add_argument("--eval-steps", type=float, default=0.0,
                        help="an evaluation's cost in training steps (trial-time); 0: trial-steps only")
    parser.add_argument("--driver", action="store_true", help="through the real driver (Ray Tune, MLflow)")
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--every", type=int, help="steps between evaluations (default: the profile's, 250)")
    parser.add_argument("--out", type=Path, default=Path("runs/pruner-table"))
    args = parser.parse_args()
    try:
        pruners = [Pruner.parse(p) for p in args.pruners]
    except ValueError as e:
        parser.error(str(e))
    from sweeps.pruning import PRUNERS

    if unknown := [str(p) for p in pruners if p.name not in PRUNERS]:
        parser.error(f"--pruners: unknown {', '.join(unknown)}; choose from {', '.join(PRUNERS)}")
    if pruners[0].name != "none":
        pruners.insert(0, Pruner("none"))
    from sweeps.simulation import MODEL, CurveModel, Replay
    from sweeps.sweep_file import load_sweep

    spec = load_sweep("digits", args.profile)
    spec = spec.with_fixed({"fid": {"metric": spec.metric or "fid", **({"every": args.every} if args.every else {})}})
    metric = spec.metric or "fid"
    recorded = None if args.source == MODEL else json.loads(Path(args.source).read_text())
    args.out.mkdir(parents=True, exist_ok=True)
    results, started = [], time.perf_counter()
    for trials in args.trials:
        for concurrency in args.concurrency:
            for seed in range(args.seeds):
                configs = draw(spec, trials, seed)
                curves = CurveModel.packaged(seed) if recorded is None else Replay.from_summary(recorded)
                runs = {}
                for pruner in pruners:
                    if args.driver:
                        source = MODEL if recorded is None else recorded["name"]
                        runs[str(pruner)] = through_driver(spec, configs, pruner, source, concurrency, seed, args.out)
                    else:
                        runs[str(pruner)] = replay(spec, configs, pruner, curves, concurrency, args.eval_steps, seed)
                for name, run in runs.items():
                    results.append({"trials": trials, "concurrency": concurrency, "seed": seed, "pruner": name,
                                    **score(run, runs["none"], DEMO_NOISE_STD[metric], args.eval_steps), "run": run})
            (args.out / "results.json").write_text(json.dumps({"args": {**vars(args), "out": str(args.out)},
                                                               "results": results}, indent=1))
    print(f"\n{args.seeds} seeds a row, evaluations every {spec.trial_config({}).fid.every} steps, {metric.upper()} "
          f"noise std {DEMO_NOISE_STD[metric]}, curves: {args.source}, "
          f"{'the real driver' if args.driver else 'replayed in process'}, {time.perf_counter() - started:.0f} s\n")
    print("| trials | at once | pruner | trial-steps fewer | trial-time fewer | regret (noise std) | "
          "best survived |")
    print("|---:|---:|---|---:|---:|---:|---:|")
    for trials in args.trials:
        for concurrency in args.concurrency:
            for pruner in pruners:
                rows = [r for r in results if (r["trials"], r["concurrency"], r["pruner"]) ==
                        (trials, concurrency, str(pruner))]
                print(f"| {trials} | {concurrency} | {pruner} | {mean_std([r['fewer_steps'] for r in rows])}x | "
                      f"{mean_std([r['fewer_time'] for r in rows])}x | {mean_std([r['regret'] for r in rows])} | "
                      f"{sum(r['survived'] for r in rows)}/{len(rows)} |")


if __name__ == "__main__":
    main()
