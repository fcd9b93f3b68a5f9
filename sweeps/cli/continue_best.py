"""Continue the best trials of a finished sweep to a larger step budget, unpruned, as one new Ray Tune run.

    fpa-continue --sweep metfaces-20261128-101500 --steps 300000     # the trials within noise of the best
    fpa-continue --sweep metfaces-20261128-101500 --top-k 3 --steps 300000
    fpa-continue --sweep NAME --top-k 1 --steps 500000 --from latest

Each continuation starts from its trial's best (or latest) checkpoint and logs into a new MLflow child
run linked to the trial's own (tag and param fpa.continues_run), so that the MLflow UI draws the whole
curve. Writes <storage>/<name>/summary.json in the form of a sweep's. To continue a sweep whose driver
died, use python sweeps/launch.py --resume NAME instead.
"""

from __future__ import annotations

import argparse
import logging
import sys

from sweeps.sweep import (SweepInterrupted, SweepNotFound, read_summary, resolve_storage,
                          tracking_uri_problems)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fpa-continue", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep", required=True, help="the finished sweep whose best trials continue")
    parser.add_argument("--top-k", type=int, help="how many of its best trials, ranked by the sweep's metric (FID or "
                                                  "KID; default: those within noise of the best, as its summary "
                                                  "says, else 3)")
    parser.add_argument("--steps", type=int, required=True, help="the new step budget of each continuation")
    parser.add_argument("--from", dest="start", choices=("best", "latest"), default="best",
                        help="continue from each trial's best checkpoint (default) or its latest")
    parser.add_argument("--name", help="this run's name (default: SWEEP-continued-YYYYmmdd-HHMMSS)")
    parser.add_argument("--storage",
                        help="where the sweep ran, a folder or s3:// (default: FPA_STORAGE, else ./sweeps_out)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: the sweep's)")
    parser.add_argument("--address", help="attach to a running Ray cluster (e.g. auto)")
    parser.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs each trial takes (default 1)")
    parser.add_argument("--max-concurrent", type=int, help="cap on continuations at once")
    args = parser.parse_args(argv)
    problems = [f"{flag} must be at least 1, got {value}" for flag, value in
                (("--top-k", args.top_k), ("--steps", args.steps), ("--max-concurrent", args.max_concurrent))
                if value is not None and value < 1]
    problems += tracking_uri_problems(args.tracking_uri)
    if problems:
        parser.exit(2, "".join(f"{parser.prog}: error: {p}\n" for p in problems))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    root = resolve_storage(args.storage)
    try:
        read_summary(root, args.sweep)  # a sweep that is not there is named before Ray and MLflow load
    except SweepNotFound as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    from sweeps.driver import continue_sweep

    try:
        summary = continue_sweep(args.sweep, root, top_k=args.top_k, steps=args.steps,
                                 start=args.start, name=args.name, tracking_uri=args.tracking_uri,
                                 address=args.address, cpus_per_trial=args.cpus_per_trial,
                                 max_concurrent=args.max_concurrent)
    except SweepInterrupted as e:
        print(f"\n{e}", file=sys.stderr)
        return 130
    except (SweepNotFound, ValueError, FileNotFoundError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    return 0 if summary["best"] else 1


if __name__ == "__main__":
    sys.exit(main())
