"""Loop vs parallel learning rules: forward and forward+backward at the paper's size.

    python benchmarks/bench_rules.py [--repeats 20] [--device cpu] [--json out.json]

N = 60 matrices (batch 20 x 3 channels), T = 64 steps, 64 x 64 images, float32. Prints a
Markdown table (median milliseconds over the repeats, after warm-up) for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from fpa_core.rules import PARALLEL_RULES, apply_rule


def inputs(n, steps, size, device, requires_grad):
    g = torch.Generator().manual_seed(0)
    leaves = [torch.randn(n, steps, size, generator=g), torch.randn(n, steps, size, generator=g) / 8,
              torch.randn(n, steps, generator=g)]
    return [t.to(device).requires_grad_(requires_grad) for t in leaves]


def time_ms(fn, repeats, device) -> float:
    for _ in range(3):
        fn()
    samples = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def bench(rule, parallel, backward, n, steps, size, repeats, device):
    logits, values, betas = inputs(n, steps, size, device, requires_grad=backward)

    def step():
        with torch.set_grad_enabled(backward):
            out = apply_rule(rule, logits.softmax(-1), values, betas.sigmoid(), parallel=parallel)
            if backward:
                out.sum().backward()

    return time_ms(step, repeats, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=60)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    device = torch.device(args.device)

    rows = []
    for rule in PARALLEL_RULES:
        row = {"rule": rule}
        for backward in (False, True):
            key = "fwd_bwd" if backward else "fwd"
            for parallel in (False, True):
                form = "parallel" if parallel else "loop"
                row[f"{key}_{form}_ms"] = bench(rule, parallel, backward, args.n, args.steps, args.size,
                                                args.repeats, device)
            row[f"{key}_speedup"] = row[f"{key}_loop_ms"] / row[f"{key}_parallel_ms"]
        rows.append(row)

    print(f"N = {args.n}, T = {args.steps}, {args.size} x {args.size}, float32, {device}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, {platform.processor() or platform.machine()}; "
          f"median of {args.repeats}\n")
    print("| rule | fwd loop (ms) | fwd parallel (ms) | speed-up | fwd+bwd loop (ms) | fwd+bwd parallel (ms) | speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['rule']} | {r['fwd_loop_ms']:.1f} | {r['fwd_parallel_ms']:.2f} | {r['fwd_speedup']:.1f}x "
              f"| {r['fwd_bwd_loop_ms']:.1f} | {r['fwd_bwd_parallel_ms']:.2f} | {r['fwd_bwd_speedup']:.1f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"n": args.n, "steps": args.steps, "size": args.size, "device": str(device),
                       "threads": torch.get_num_threads(), "torch": torch.__version__, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
