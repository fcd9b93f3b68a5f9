"""What an evaluation costs on this machine, and how much its scores move between sample seeds.

    python benchmarks/bench_metrics.py throughput [--repeats 3]        # Inception images/s, 2048-d and 64-d
    python benchmarks/bench_metrics.py cost                             # one periodic evaluation per packaged config
    python benchmarks/bench_metrics.py noise --checkpoint CKPT [--seeds 5] [--num-images N] [--dims D]

throughput: the calibrated FID Inception on batches of 50 images (16 x 16 inputs, resized to 299 x 299 as
pytorch-fid does), the default layout against channels-last, interleaved, median over the repeats.
cost: for each packaged training config, fid.num_images generated images through the network at the
throughput just measured, plus the Fréchet distance, KID and precision/recall measured on random
features of the sizes that config meets (its real set's size capped at fpa_core.metrics.MAX_FEATURES).
noise: one checkpoint scored with --seeds latent seeds at its run's evaluation settings (or those given):
the mean and std of FID and KID. Prints Markdown for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

from fpa_core import checkpoint
from fpa_core.metrics import weights as inception_weights
from fpa_core.metrics.protocol import evaluate_checkpoint
from fpa_core.metrics.fid import frechet_distance
from fpa_core.metrics.inception import build
from fpa_core.metrics.kid import kernel_inception_distance
from fpa_core.metrics.evaluator import MAX_FEATURES
from fpa_core.metrics.precision_recall import precision_recall
from fpa_core.train.config import load_config, packaged_configs

REAL_IMAGES = {"digits": 1797, "mnist": 5000, "celeba": 202_599, "metfaces": 1336, "afhq-cat": 5153, "afhq-dog": 4739,
               "afhq-wild": 4738, "lsun-church": 126_227}  # Appendix B.1; AFHQ's train splits


def images_per_s(model: torch.nn.Module, batch: torch.Tensor, channels_last: bool) -> float:
    if channels_last:
        model, batch = model.to(memory_format=torch.channels_last), batch.contiguous(memory_format=torch.channels_last)
    else:
        model = model.to(memory_format=torch.contiguous_format)
    with torch.inference_mode():
        start = time.perf_counter()
        model(batch)
        return len(batch) / (time.perf_counter() - start)


def throughput(repeats: int) -> dict[int, float]:
    weights = inception_weights.find_weights()
    batch = torch.rand(50, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}\n")
    print("| features | default layout (images/s) | channels-last (images/s) | speed-up |\n|---|---:|---:|---:|")
    best = {}
    for dims in (2048, 64):
        model = build(weights.state_dict, dims)
        images_per_s(model, batch[:4], True)  # warm-up
        runs = {False: [], True: []}
        for _ in range(repeats):
            for layout in (False, True):
                runs[layout].append(images_per_s(model, batch, layout))
        default, last = statistics.median(runs[False]), statistics.median(runs[True])
        best[dims] = max(default, last)
        print(f"| {dims}-d | {default:.1f} | {last:.1f} | {last / default:.2f}x |")
    return best


def timed(fn, *args, **kwargs) -> float:
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


def cost(rate: dict[int, float]) -> None:
    rng = np.random.default_rng(0)
    print("\n| config | generated images | real images | features | Inception (s) | FID + KID + P/R (s) | "
          "one evaluation (s) | real features, once (s) |\n|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in packaged_configs():
        fid = load_config(name).fid
        n_real = REAL_IMAGES[name]
        fake = np.maximum(rng.standard_normal((min(fid.num_images, MAX_FEATURES), fid.dims)), 0).astype(np.float32)
        real = np.maximum(rng.standard_normal((min(n_real, MAX_FEATURES), fid.dims)), 0).astype(np.float32)
        mu, sigma = real.mean(0), np.cov(real, rowvar=False)
        scores_s = timed(frechet_distance, mu, sigma, mu + 0.1, sigma) + timed(kernel_inception_distance, fake, real) \
            + timed(precision_recall, fake, real)
        network_s = fid.num_images / rate[fid.dims]
        print(f"| {name} | {fid.num_images:,} | {n_real:,} | {fid.dims} | {network_s:.0f} | {scores_s:.1f} | "
              f"{network_s + scores_s:.0f} | {n_real / rate[fid.dims]:.0f} |")


def noise(uri: str, seeds: int, num_images: int | None, dims: int | None) -> None:
    state = checkpoint.load(uri)
    trained = state["config"]["fid"]
    settings = {"num_images": num_images or trained["num_images"], "dims": dims or trained["dims"],
                "backbone": trained["backbone"], "image_format": trained["image_format"]}
    rows = []
    for seed in range(seeds):
        rows.append(evaluate_checkpoint(state, **settings, seed=seed, source=uri)["scores"])
        print(f"seed {seed}: FID {rows[-1]['fid']:.3f}, KID {rows[-1]['kid']:.5f}", flush=True)
    fids, kids = [r["fid"] for r in rows], [r["kid"] for r in rows]
    print(f"\n{uri} at step {state['step']}, {settings['num_images']} images, {settings['dims']}-d, {seeds} seeds:")
    print(f"| FID mean | FID std | KID mean | KID std |\n|---:|---:|---:|---:|\n"
          f"| {np.mean(fids):.3f} | {np.std(fids, ddof=1):.3f} | {np.mean(kids):.5f} | {np.std(kids, ddof=1):.5f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("throughput").add_argument("--repeats", type=int, default=3)
    commands.add_parser("cost").add_argument("--repeats", type=int, default=3)
    n = commands.add_parser("noise")
    n.add_argument("--checkpoint", required=True)
    n.add_argument("--seeds", type=int, default=5)
    n.add_argument("--num-images", type=int)
    n.add_argument("--dims", type=int)
    args = parser.parse_args()
    if args.command == "noise":
        noise(args.checkpoint, args.seeds, args.num_images, args.dims)
        return
    rate = throughput(args.repeats)
    if args.command == "cost":
        cost(rate)


if __name__ == "__main__":
    main()
