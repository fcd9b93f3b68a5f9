"""Sweep the FPA search space of a dataset: Ray Tune schedules the trials, Optuna samples and prunes them
on their periodic FID, MLflow records every trial.

    python sweeps/launch.py --dataset metfaces                      # on the Ray cluster it is attached to
    python sweeps/launch.py --dataset digits --profile demo         # the embedded default, on this machine
    python sweeps/launch.py --dataset metfaces --submit http://HEAD:8265    # as a Ray Job on a cluster
    python sweeps/launch.py --resume metfaces-20261128-101500       # continue a sweep whose driver died
    python sweeps/launch.py --dataset metfaces --stage unet --base champion   # U-Net on the champion FPA

Writes <storage>/<name>/summary.json and prints the trials, the best config and where to look.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

from fpa_core import storage
from fpa_core.config import ConfigError, parse_overrides
from fpa_core.data import DatasetNotFoundError
from fpa_core.metrics import METRICS
from sweeps import preflight
from sweeps.jobs import JobServerUnreachable, submit
from sweeps.pruning import PRUNERS, pruner_defaults
from sweeps.sweep_file import load_sweep, sweep_names
from sweeps.sweep import (SweepError, SweepInterrupted, SweepNotFound, new_settings, read_record, resolve_storage,
                          sweep_exists, tracking_uri_problems)

log = logging.getLogger("sweeps.launch")

# What a sweep that cannot run as asked raises: exit 2 with its message. Anything else is a bug, with its traceback.
USER_ERRORS = (SweepError, ConfigError, DatasetNotFoundError)

RESUME_FIXED = [("--dataset", "dataset"), ("--profile", "profile"), ("--name", "name"),
                ("--num-trials", "num_trials"), ("--max-concurrent", "max_concurrent"),
                ("--max-failures", "max_failures"), ("--cpus-per-trial", "cpus_per_trial"),
                ("--gpus-per-trial", "gpus_per_trial"), ("--pruner", "pruner"),
                ("--warmup", "warmup"), ("--patience", "patience"), ("--seed", "seed"), ("--set", "overrides"),
                ("--stage", "stage"),
                ("--base", "base"), ("--metric", "metric"), ("--simulate", "simulate"),
                ("--step-seconds", "step_seconds"), ("--keep-full", "keep_full")]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python sweeps/launch.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", help=f"the sweep to run: {', '.join(sweep_names())}, or a sweep YAML file")
    p.add_argument("--resume", metavar="NAME", help="continue the sweep NAME (in --storage) whose driver died")
    p.add_argument("--profile", help="a named profile of the sweep file (e.g. demo)")
    p.add_argument("--stage", choices=("fpa", "unet"), default="fpa",
                   help="fpa (default), or unet: sweep a U-Net refining the frozen FPA of --base (Sec. 3.2)")
    p.add_argument("--base", help="with --stage unet: champion (the registry's, default), models:/NAME@ALIAS, "
                                  "or an FPA checkpoint (local or s3://)")
    p.add_argument("--name", help="the sweep's name (default: DATASET-YYYYmmdd-HHMMSS)")
    p.add_argument("--num-trials", type=int, help="trials to run (default: the sweep file's, else 20)")
    p.add_argument("--max-concurrent", type=int, help="cap on trials at once (default: as resources allow)")
    p.add_argument("--max-failures", type=int, default=2, help="retries of a failed trial from its checkpoint")
    p.add_argument("--cpus-per-trial", type=float,
                   help="CPUs each trial takes (default 1; a simulated trial 1/16, as it only sleeps)")
    p.add_argument("--gpus-per-trial", type=float, help="GPUs each trial takes (default: 1 if the cluster has "
                                                        "GPUs now, else 0; 1 makes an autoscaler add GPU nodes)")
    p.add_argument("--pruner", choices=PRUNERS, help="Optuna pruner (default: the sweep file's, else margin-halving with "
                                                           "--metric kid and median with fid)")
    p.add_argument("--metric", choices=METRICS,
                   help="what Optuna minimises and prunes on: fid or kid, which is unbiased at the small sample "
                        "sizes of a periodic evaluation; also what picks each trial's best checkpoint (default: the "
                        "sweep file's, else fid)")
    p.add_argument("--warmup", type=int, help="evaluations of a trial before it may be pruned (default: the sweep "
                                              "file's, else 0 for margin-halving and 1 for the others)")
    p.add_argument("--patience", type=int, help="let --pruner stop a trial only once its last N evaluations brought "
                                                "no new best (Optuna's PatientPruner; default: the sweep file's, else "
                                                "no patience)")
    p.add_argument("--budget-gpu-hours", type=float, metavar="H",
                   help="start no new trial once the trials have used H GPU-hours; running trials finish. With "
                        "--resume: the resumed sweep's new budget")
    p.add_argument("--budget-cpu-hours", type=float, metavar="H",
                   help="the same in CPU-hours (trials that take no GPU)")
    p.add_argument("--keep-full", type=int, default=3, metavar="K",
                   help="the best K trials keep every checkpoint; each other trial, once it has ended, keeps only its "
                        "generator (best.pt: G and its EMA), so that storage does not grow with pruned trials "
                        "(default 3)")
    p.add_argument("--seed", type=int, default=0, help="seed of Optuna's TPE sampler")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="fix a training field for every trial, e.g. --set fid.backbone=inception-random")
    p.add_argument("--storage",
                   help="Ray's experiment state, checkpoints and trial folders: a folder or s3://bucket/prefix "
                        "(default: FPA_STORAGE, else ./sweeps_out)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else "
                                          "sqlite:///./mlflow.db)")
    p.add_argument("--optuna-storage",
                   help="Optuna's database URL (default: FPA_OPTUNA_STORAGE, else SQLite in the sweep folder)")
    p.add_argument("--address", help="attach to a running Ray cluster (e.g. auto or ray://HEAD:10001)")
    p.add_argument("--or-resume", action="store_true",
                   help="with --name: when the storage already holds that sweep, resume it (as --resume NAME) instead "
                        "of refusing; what a RayJob that Kueue preempted and brought back runs")
    p.add_argument("--simulate", metavar="SOURCE",
                   help="everything real but the training: each trial replays a learning curve, from model (the "
                        "fitted curve model) or a finished sweep's trials; to size a cluster, tune a pruner or "
                        "rehearse a deploy without GPUs. Labelled simulated everywhere")
    p.add_argument("--step-seconds", type=float, metavar="S",
                   help="with --simulate: the seconds a simulated training step takes (default 0.001)")
    p.add_argument("--submit", metavar="URL", help="run the sweep as a Ray Job on the cluster at URL (:8265)")
    p.add_argument("--detach", action="store_true", help="with --submit: return at once with the job id")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    problems = _check_args(args)
    if args.resume:
        problems += [f"{flag} cannot change when resuming: --resume {args.resume} runs the sweep as it was started"
                     for flag, dest in RESUME_FIXED if getattr(args, dest) != parser.get_default(dest)]
    if problems:
        parser.exit(2, "".join(f"{parser.prog}: error: {p}\n" for p in problems))
    if args.or_resume and not args.submit and sweep_exists(resolve_storage(args.storage), args.name):
        print(f"the storage already holds sweep {args.name}: resuming it", flush=True)
        args.resume = args.name
    if args.resume:
        return _resume(parser, args, argv)
    try:
        spec = load_sweep(args.dataset, args.profile, args.stage)
        fixed = parse_overrides(args.overrides)
        if fixed:
            spec = spec.with_fixed(fixed)
    except ConfigError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    if spec.grid is not None:
        problems = [f"--num-trials {args.num_trials}: the ablation grid runs each of its {len(spec.cells())} cells "
                    f"x {spec.seeds} seeds once, {spec.num_trials} trials; drop --num-trials"] \
            if args.num_trials not in (None, spec.num_trials) else []
        if args.pruner not in (None, "none"):
            problems.append(f"--pruner {args.pruner}: an ablation runs every cell to the same budget; drop --pruner")
        if problems:
            parser.error("; ".join(problems))
    stage = "-unet" if args.stage == "unet" else ""
    name = args.name or f"{Path(spec.name).stem}{stage}-{time.strftime('%Y%m%d-%H%M%S')}"
    if args.submit:
        return _submit(parser, args, argv, name)

    metric = _first(args.metric, spec.metric, "fid")
    pruner, warmup = pruner_defaults(metric, _first(args.pruner, spec.pruner))
    settings = new_settings(
        name, storage=args.storage, tracking_uri=args.tracking_uri, optuna_storage=args.optuna_storage,
        num_trials=_first(args.num_trials, spec.num_trials, 20), max_concurrent=args.max_concurrent,
        max_failures=args.max_failures, cpus_per_trial=_first(args.cpus_per_trial, 1 / 16 if args.simulate else 1.0),
        gpus_per_trial=args.gpus_per_trial, simulate=args.simulate,
        step_seconds=_first(args.step_seconds, 0.001),
        pruner=pruner, warmup=_first(args.warmup, spec.warmup, warmup),
        patience=_first(args.patience, spec.patience), budget_gpu_hours=args.budget_gpu_hours,
        budget_cpu_hours=args.budget_cpu_hours, keep_full=args.keep_full, seed=args.seed, address=args.address, profile=args.profile,
        stage=args.stage, base=args.base if args.stage == "unet" else None,
        metric=metric)
    found = preflight.problems(spec, settings)  # before Ray, MLflow and Optuna load: a second, not a minute
    if found:
        _usage_error(parser, SweepError(found))
    from sweeps.driver import run_sweep

    return _drive(parser, lambda: run_sweep(spec, settings), settings.name, settings.folder)


def _drive(parser: argparse.ArgumentParser, run: Callable[[], dict], name: str, folder: str) -> int:
    """Run a sweep to its summary, and its end as an exit code: 0 with a best trial, 1 without one or with its
    storage lost, 130 interrupted (resumable), 2 when it cannot run as asked. Anything else is a bug."""
    try:
        summary = run()
    except SweepInterrupted as e:
        print(f"\n{e}", file=sys.stderr)
        return 130
    except USER_ERRORS as e:
        _usage_error(parser, e)
    except Exception as e:
        return _lost_storage(e, name, folder)
    return 0 if summary["best"] else 1


def _usage_error(parser: argparse.ArgumentParser, error: Exception) -> None:
    """Exit 2 with one line per problem."""
    lines = error.problems if isinstance(error, SweepError) else [str(error)]
    parser.exit(2, "".join(f"{parser.prog}: error: {line}\n" for line in lines))


def _lost_storage(error: Exception, name: str, folder: str) -> int:
    """A sweep whose disk or storage went away: one message, how to go on, exit 1; anything else is a bug."""
    if not storage.is_lost_storage(error):
        raise error
    print(f"\nerror: sweep {name} lost its storage ({type(error).__name__}: {error}). What it wrote to {folder} "
          "is intact: each trial's checkpoints (the newest that loads is where it goes on), and its study. Once the "
          f"storage is back (or has room), continue with: python sweeps/launch.py --resume {name} (and the same "
          "--storage)", file=sys.stderr)
    return 1


def _submit(parser: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str] | None,
            name: str) -> int:
    """Run the command line on the cluster: without --submit, and with the sweep's name (made here when the
    command gave none, so that the job, its queue slot and `fpa-status` know it)."""
    forwarded = _forwarded_args(argv if argv is not None else sys.argv[1:])
    if not args.resume and not args.name:
        forwarded += ["--name", name]
    try:
        return submit(args.submit, forwarded, name, detach=args.detach)
    except JobServerUnreachable as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")


def _first(*values):
    """The first value that is not None: the flag's, else the sweep file's, else the default."""
    return next((v for v in values if v is not None), None)


def _resume(parser: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str] | None) -> int:
    if args.submit:
        return _submit(parser, args, argv, args.resume)
    root = resolve_storage(args.storage)
    try:
        read_record(root, args.resume)  # a sweep that is not there is named before Ray, Optuna and MLflow load
    except SweepNotFound as e:
        _usage_error(parser, e)
    from sweeps.driver import resume_sweep

    return _drive(parser, lambda: resume_sweep(
        args.resume, root, tracking_uri=args.tracking_uri, optuna_storage=args.optuna_storage, address=args.address,
        budget_gpu_hours=args.budget_gpu_hours, budget_cpu_hours=args.budget_cpu_hours),
        args.resume, storage.join(root, args.resume))


def _check_args(args: argparse.Namespace) -> list[str]:
    problems = []
    if not args.dataset and not args.resume:
        problems.append(f"--dataset is required: one of {', '.join(sweep_names())}, or a sweep YAML file "
                        "(or --resume NAME to continue a sweep)")
    for flag, value, low in (("--num-trials", args.num_trials, 1), ("--max-concurrent", args.max_concurrent, 1),
                             ("--max-failures", args.max_failures, 0), ("--warmup", args.warmup, 0),
                             ("--patience", args.patience, 1), ("--keep-full", args.keep_full, 0)):
        if value is not None and value < low:
            problems.append(f"{flag} must be at least {low}, got {value}")
    for flag, value in (("--budget-gpu-hours", args.budget_gpu_hours), ("--budget-cpu-hours", args.budget_cpu_hours)):
        if value is not None and not value > 0:
            problems.append(f"{flag} must be positive, got {value}")
    if args.cpus_per_trial is not None and args.cpus_per_trial <= 0:
        problems.append(f"--cpus-per-trial must be positive, got {args.cpus_per_trial}")
    if args.step_seconds is not None and (args.step_seconds < 0 or not args.simulate):
        problems.append(f"--step-seconds {args.step_seconds}: " + ("goes with --simulate SOURCE" if not args.simulate
                                                                   else "must be 0 or more"))
    if args.gpus_per_trial is not None and args.gpus_per_trial < 0:
        problems.append(f"--gpus-per-trial must be 0 or more, got {args.gpus_per_trial}")
    if args.base and args.stage != "unet":
        problems.append("--base only goes with --stage unet (the FPA that the U-Net refines)")
    if args.or_resume and not args.name:
        problems.append("--or-resume needs --name: the sweep to resume when the storage holds it")
    if args.or_resume and args.resume:
        problems.append("--or-resume goes with --dataset and --name, not --resume")
    if args.detach and not args.submit:
        problems.append("--detach only goes with --submit URL")
    if args.submit and args.address:
        problems.append("--submit and --address exclude each other: a submitted job runs on the cluster's head")
    if storage.location_problem(args.storage):
        problems.append(f"--storage {storage.location_problem(args.storage)}")
    problems += tracking_uri_problems(args.tracking_uri)
    return problems


def _forwarded_args(argv: list[str]) -> list[str]:
    """The command line minus --submit URL and --detach: what the job runs on the cluster."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--submit":
            skip = True
        elif arg.startswith("--submit=") or arg == "--detach":
            continue
        else:
            out.append(arg)
    return out


if __name__ == "__main__":
    sys.exit(main())

