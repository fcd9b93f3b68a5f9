"""Peak memory of saving and loading a paper-scale checkpoint to S3: the old in-memory path against the streamed one.

    python benchmarks/checkpoint_memory.py [--config metfaces] [--endpoint http://127.0.0.1:PORT]

The checkpoint is what the trainer writes for the config (G, its EMA, D and both Adam states, each Adam
state as large as its parameters, as after the first step), built on the CPU from the config's G and D.
Without --endpoint a moto S3 server is started on a free loopback port. Each measurement runs in its own
process: it builds the state (or nothing, to load), resets the kernel's peak-RSS counter
(/proc/self/clear_refs), runs one save or load and reports its peak RSS above what it held before (VmHWM).

- before: ``torch.save`` into a BytesIO, ``getvalue()``, one ``put_object``; read back with
  ``get_object().read()`` and a weights-only load of the BytesIO (the code before issue 14).
- after: ``fpa_core.checkpoint.save``/``load``: a temporary file, boto3's multipart transfer, and a
  weights-only, memory-mapped load.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from moto_s3 import start_moto

ROOT = Path(__file__).resolve().parent.parent


def _kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _state(config_name: str) -> dict:
    import torch

    from fpa_core.discriminator import Discriminator
    from fpa_core.model import FPAGenerator
    from fpa_core.train.config import load_config

    config = load_config(config_name, {})
    G = FPAGenerator(config.model)
    D = Discriminator(config.discriminator, image_size=config.data.resolution, channels=config.model.channels)

    def adam(module):  # exp_avg and exp_avg_sq for every parameter, as after one step
        return {"state": {i: {"step": torch.tensor(1.0), "exp_avg": torch.zeros_like(p),
                              "exp_avg_sq": torch.zeros_like(p)} for i, p in enumerate(module.parameters())},
                "param_groups": [{"lr": 2e-4, "params": list(range(len(list(module.parameters()))))}]}

    return {"step": 1, "config": {}, "generator": G.state_dict(),
            "generator_ema": {k: v.clone() for k, v in G.state_dict().items()}, "discriminator": D.state_dict(),
            "opt_g": adam(G), "opt_d": adam(D), "evaluations": []}


def child(mode: str, config_name: str, uri: str) -> None:
    import boto3
    import torch

    from fpa_core import checkpoint, storage

    bucket, key = uri[len("s3://"):].split("/", 1)
    state = _state(config_name) if mode.startswith("save") else None
    size = sum(t.numel() * t.element_size() for part in ("generator", "generator_ema", "discriminator")
               for t in state[part].values()) * 1 if state else 0
    if state:
        size += sum(t.numel() * t.element_size() for opt in ("opt_g", "opt_d")
                    for s in state[opt]["state"].values() for t in s.values())
    before = _kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # the peak starts again from here
    start = time.perf_counter()
    if mode == "save-before":
        buffer = io.BytesIO()
        torch.save({"format_version": 2, **state}, buffer)
        boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=buffer.getvalue())
    elif mode == "save-after":
        checkpoint.save(uri, state)
    elif mode == "load-before":
        data = boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
        loaded = torch.load(io.BytesIO(data), weights_only=True)
    elif mode == "load-after":
        loaded = checkpoint.load(uri)
    if mode.startswith("load"):  # every tensor read once, as load_state_dict does
        total = sum(float(t.float().sum()) for part in ("generator", "generator_ema", "discriminator")
                    for t in loaded[part].values())
        assert total == total
    seconds = time.perf_counter() - start
    peak = _kib("VmHWM")
    print(json.dumps({"mode": mode, "state_gb": size / 1e9, "held_before_gb": before * 1024 / 1e9,
                      "peak_above_gb": (peak - before) * 1024 / 1e9, "seconds": seconds,
                      "object_gb": storage.exists(uri) and boto3.client("s3").head_object(
                          Bucket=bucket, Key=key)["ContentLength"] / 1e9}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="metfaces")
    parser.add_argument("--endpoint", help="an S3 endpoint (default: a moto server started here)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--uri", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.config, args.uri)

    import boto3

    server = None
    endpoint = args.endpoint
    if endpoint is None:
        server, endpoint = start_moto()
    env = {**os.environ, "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "x"),
           "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "x"), "AWS_DEFAULT_REGION": "us-east-1"}
    try:
        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                     aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1"
                     ).create_bucket(Bucket="fpa-bench")
        rows = []
        for mode in ("save-before", "load-before", "save-after", "load-after"):
            kind = "before" if mode.endswith("before") else "after"
            uri = f"s3://fpa-bench/{kind}.pt"
            out = subprocess.run([sys.executable, __file__, "--config", args.config, "--child", mode, "--uri", uri],
                                 env=env, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                raise SystemExit(f"{mode}: {out.stderr[-2000:]}")
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        if server is not None:
            server.terminate()
    print(f"\n{args.config}: a checkpoint of {rows[0]['state_gb']:.2f} GB of tensors "
          f"({rows[0]['object_gb']:.2f} GB on S3)\n")
    print("| path | save: peak above the state | load: peak | save s | load s |\n|---|---:|---:|---:|---:|")
    for kind, (save, load) in (("before (BytesIO, put_object, get_object)", rows[0:2]),
                               ("after (file, multipart, mmap)", rows[2:4])):
        print(f"| {kind} | {save['peak_above_gb']:.2f} GB | {load['peak_above_gb']:.2f} GB | {save['seconds']:.0f} | "
              f"{load['seconds']:.0f} |")


if __name__ == "__main__":
    main()
