"""Train an FPA GAN.

    python -m fpa_core.train --config digits
    python -m fpa_core.train --config metfaces --dataset ./data/metfaces.zip --set model.d_hidden=2048
    python -m fpa_core.train --out runs/digits --resume --steps 20000

The run folder (``--out``, local or s3://) receives config.yaml, checkpoints/, samples/, painting/,
metrics.jsonl and summary.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from fpa_core import storage
from fpa_core.config import ConfigError, parse_overrides
from fpa_core.data import DatasetNotFoundError
from fpa_core.metrics.weights import FIDWeightsInvalid, FIDWeightsUnavailable
from fpa_core.metrics import describe
from fpa_core.train.config import load_config, packaged_configs
from fpa_core.train.errors import NonFiniteLossError, RunExistsError
from fpa_core.train.trainer import Trainer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fpa_core.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help=f"a packaged config ({', '.join(packaged_configs())}) or a YAML file")
    parser.add_argument("--dataset", help="a dataset name, folder or zip (sets data.dataset)")
    parser.add_argument("--steps", type=int, help="train up to this step (sets steps)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a field, e.g. --set model.d_hidden=2048 (repeatable)")
    parser.add_argument("--out", help="the run folder, local or s3://bucket/prefix (default: runs/CONFIG-TIME)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 0:
        parser.error("--steps must be >= 0")
    if args.resume and not args.out:
        parser.error("--resume needs --out, the folder of the run to continue")
    if not args.resume and not args.config:
        parser.error("--config is required (or --resume with --out)")
    if storage.location_problem(args.out):
        parser.error(f"--out {storage.location_problem(args.out)}")
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    try:
        overrides = parse_overrides(args.overrides)
        if args.dataset:
            overrides.setdefault("data", {})["dataset"] = args.dataset
        if args.steps is not None:
            overrides["steps"] = args.steps
        if args.resume:
            trainer = Trainer.resume(args.out, overrides)
        else:
            config = load_config(args.config, overrides)
            out = args.out or f"runs/{_stem(args.config)}-{time.strftime('%Y%m%d-%H%M%S')}"
            trainer = Trainer(config, out)
    except (ConfigError, DatasetNotFoundError, FIDWeightsUnavailable, FIDWeightsInvalid, RunExistsError,
            FileNotFoundError, ValueError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")

    resume = f"python -m fpa_core.train --out {trainer.folder.root} --resume"
    try:
        summary = trainer.train()
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ninterrupted at step {trainer.step}; the last checkpoint is {trainer.last_checkpoint}. "
              f"Continue with: {resume}", file=sys.stderr)
        return 130
    except Exception as e:
        if not storage.is_lost_storage(e):  # a full disk, a storage that stopped answering: said below
            raise
        print(f"error: the run lost its storage at step {trainer.step} ({type(e).__name__}: {e}). Every file "
              f"written before is intact; the last good checkpoint is {trainer.last_checkpoint or 'none yet'}. "
              f"Once the storage is back (or has room), continue with: {resume}", file=sys.stderr)
        return 1
    label = "FID" if summary["fid_calibrated"] else "FID (uncalibrated: inception-random)"
    print(f"done: {summary['steps']} steps in {summary['wall_time_s']:.0f} s")
    for name in ("best", "final"):
        if summary[name] is not None:
            print(f"{name} (step {summary[name]['step']}): {describe(summary[name], label)}")
    print(f"run folder: {summary['out']}  (summary.json, metrics.jsonl, checkpoints/, samples/, painting/)")
    print(json.dumps({k: summary[k] for k in ("steps", "metric", "best", "final", "fid_calibrated")}))
    return 0


def _stem(name: str) -> str:
    return name.rsplit("/", 1)[-1].removesuffix(".yaml").removesuffix(".yml")


if __name__ == "__main__":
    sys.exit(main())
