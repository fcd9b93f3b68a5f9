"""The Fréchet distance of fpa_core.metrics.fid against pytorch-fid's, on 2048-d statistics.

    python benchmarks/bench_fid.py [--dims 2048] [--n 4096] [--repeats 3] [--json out.json]

Statistics of n feature vectors like Inception's pool features (ReLU'd, correlated, positive mean); two
cases: two different sets (a FID in the hundreds) and a set against a slight perturbation of itself
(a small FID, where the trace terms nearly cancel). Prints a Markdown table (median seconds over the
repeats, after one warm-up call each) for BENCHMARKS.md. pytorch-fid's time depends much on what else
runs (its OpenBLAS threads spin against other processes), hence the load average in the header.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np
import scipy
from pytorch_fid.fid_score import calculate_frechet_distance

from fpa_core.metrics.fid import frechet_distance


def feature_stats(rng: np.random.Generator, n: int, dims: int, shift: float, scale: float):
    mix = rng.standard_normal((dims, dims)) * scale / np.sqrt(dims)
    x = np.maximum(rng.standard_normal((n, dims)) @ mix + shift, 0)  # (n, dims)
    return x.mean(axis=0), np.cov(x, rowvar=False)


def cases(n: int, dims: int) -> dict[str, tuple]:
    rng = np.random.default_rng(0)
    a = feature_stats(rng, n, dims, shift=0.1, scale=1.0)
    b = feature_stats(rng, n, dims, shift=0.2, scale=1.2)
    _, noise = feature_stats(rng, n, dims, shift=0.0, scale=1.0)
    near = (a[0] + 1e-3 * rng.standard_normal(dims), a[1] + 1e-3 * noise)
    return {"different sets": (*a, *b), "nearly identical": (*a, *near)}


def time_s(fn, args: tuple, repeats: int) -> tuple[float, float]:
    """(median seconds of fn(*args), the value of the last call)."""
    value = fn(*args)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn(*args)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples), float(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dims", type=int, default=2048)
    parser.add_argument("--n", type=int, default=4096, help="feature vectors behind each covariance")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()

    load = os.getloadavg()[0]  # pytorch-fid's sqrtm slows down several-fold on a busy machine
    rows = []
    for name, stats in cases(args.n, args.dims).items():
        ours_s, ours = time_s(frechet_distance, stats, args.repeats)
        theirs_s, theirs = time_s(calculate_frechet_distance, stats, args.repeats)
        rows.append({"case": name, "fid": theirs, "pytorch_fid_s": theirs_s, "fpa_core_s": ours_s,
                     "speedup": theirs_s / ours_s, "relative_difference": abs(ours - theirs) / abs(theirs)})

    print(f"D = {args.dims}, covariances of {args.n} vectors, float64, {os.cpu_count()} CPUs, numpy {np.__version__}, "
          f"scipy {scipy.__version__}, {platform.processor() or platform.machine()}, load average {load:.1f} at the start; "
          f"median of {args.repeats}\n")
    print("| case | FID | pytorch-fid (s) | fpa_core (s) | speed-up | relative difference |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['case']} | {r['fid']:.4g} | {r['pytorch_fid_s']:.2f} | {r['fpa_core_s']:.2f} "
              f"| {r['speedup']:.1f}x | {r['relative_difference']:.1e} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"dims": args.dims, "n": args.n, "repeats": args.repeats, "cpus": os.cpu_count(), "load": load,
                       "numpy": np.__version__, "scipy": scipy.__version__, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
