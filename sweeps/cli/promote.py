"""Promote a sweep's best generator to champion of the MLflow registered model ``fpa-<dataset>``.

    fpa-promote --sweep metfaces-20261128-101500     # its best trial's best checkpoint
    fpa-promote --run 3f2a...                         # the best checkpoint of one MLflow run
    fpa-promote --sweep NAME --evaluate 50000         # scored first as the paper did (fp32, 50 K)
    fpa-promote --sweep NAME --force                  # champion even if not better

Registers a new version and moves the alias ``champion`` to it only when it beats the current champion on
the run's metric (FID, or KID for a --metric kid sweep) measured the same way (the same protocol: Inception
weights, feature size, image format and count, dataset), and by more than the noise of the comparison: twice
the std of the difference of two evaluations, each version's std measured over --noise-seeds fresh latent
seeds when it is registered. The former champion keeps ``previous-champion``. Then:

    python -m fpa_core.paint --model models:/fpa-metfaces@champion --out paintings/
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from fpa_core.metrics.noise import NOISE_SEEDS
from sweeps.sweep import (SweepNotFound, read_summary, resolve_storage, resolve_tracking_uri,
                          tracking_uri_problems)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fpa-promote", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--sweep", help="a finished sweep (its summary.json in --storage): promote its best trial")
    source.add_argument("--run", metavar="RUN_ID", help="an MLflow trial run: promote its best checkpoint")
    parser.add_argument("--force", action="store_true", help="make it champion even if it is not better")
    parser.add_argument("--evaluate", type=int, metavar="N",
                        help="score the candidate first with N images as fpa_core.evaluate does (the paper used "
                             "50000); champions are compared only under the same protocol")
    parser.add_argument("--noise-seeds", type=int, default=NOISE_SEEDS, metavar="N",
                        help="fresh latent seeds that measure the candidate's noise under its protocol (default "
                             f"{NOISE_SEEDS}; 0: KID's own std over subsets, for a --metric kid sweep)")
    parser.add_argument("--storage",
                        help="where the sweep ran, a folder or s3:// (default: FPA_STORAGE, else ./sweeps_out)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else "
                                               "sqlite:///./mlflow.db)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    problems = tracking_uri_problems(args.tracking_uri)
    if args.evaluate is not None and args.evaluate < 2:
        problems.append(f"--evaluate must be at least 2 images, got {args.evaluate}")
    if args.noise_seeds == 1 or args.noise_seeds < 0:
        problems.append(f"--noise-seeds must be 0 (KID's own std) or at least 2 (a std needs two), got "
                        f"{args.noise_seeds}")
    if problems:
        parser.exit(2, f"{parser.prog}: error: {problems[0]}\n")

    summary = None
    if args.sweep:  # a sweep that is not there is named before MLflow loads
        try:
            summary = read_summary(resolve_storage(args.storage), args.sweep)
        except SweepNotFound as e:
            parser.exit(2, f"{parser.prog}: error: {e}\n")

    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from fpa_core.metrics.weights import FIDWeightsUnavailable
    from sweeps.registry import promote

    tracking_uri = resolve_tracking_uri(args.tracking_uri)
    try:
        if summary is not None:
            if summary.get("simulated"):
                parser.exit(2, f"{parser.prog}: error: sweep {args.sweep} was simulated (--simulate "
                               f"{summary['simulated']['source']}): its trials trained nothing and are never "
                               "promoted\n")
            if not summary.get("best"):
                print(f"nothing to promote: no trial of sweep {args.sweep} reached an FID evaluation")
                return 0
            best, sweep = summary["best"], args.sweep
            checkpoint_uri, run_id = best["checkpoint"], best["run_id"]
        else:
            run = MlflowClient(tracking_uri).get_run(args.run)
            checkpoint_uri, run_id = run.data.tags.get("fpa.best_checkpoint"), args.run
            sweep = run.data.tags.get("fpa.sweep")
            if not checkpoint_uri:
                print(f"nothing to promote: run {args.run} has no best checkpoint (no FID evaluation logged)")
                return 0
        result = promote(checkpoint_uri, run_id, tracking_uri, sweep=sweep, force=args.force, evaluate=args.evaluate,
                         noise_seeds=args.noise_seeds)
    except (ValueError, FileNotFoundError, MlflowException, FIDWeightsUnavailable) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    print(result.describe())
    if result.version is not None:
        print(f"load it: python -m fpa_core.paint --model models:/{result.model}@champion --out DIR"
              if result.champion else f"models:/{result.model}/{result.version}")
    print(json.dumps({"model": result.model, "version": result.version, "champion": result.champion,
                      "previous_champion": result.previous, "reason": result.reason}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
