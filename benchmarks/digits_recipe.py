"""Why did the digits config collapse, and what trains instead? Runs variants of the recipe and scores them.

    python benchmarks/digits_recipe.py --round 1 [--jobs 2] [--out runs/recipe]     # one change at a time
    python benchmarks/digits_recipe.py --round 2 ...                                # the changes combined
    python benchmarks/digits_recipe.py --round 5 --steps 2000 --num-images 200      # the pixel range, 3 seeds

Every variant is ``python -m fpa_core.train --config digits`` with the overrides below, on scikit-learn's
digits at 32 x 32, scored at its last step with the calibrated FID Inception (2048-d, JPEG) on --num-images
samples against all 1,797 digits: FID, KID, precision and recall. ``--jobs 2`` runs two at a time on one
thread each. Writes, under --out: one run folder per variant, ``results.md`` (the table for BENCHMARKS.md)
and ``grids.png`` (every variant's final sample grid, labelled). ROUNDS lists the variants.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

# The packaged digits config as it was when it collapsed (fpa_core/configs/digits.yaml before issue 11).
BEFORE = {
    "model.input_generator": "v2", "model.input_tanh": False, "model.latent_to_init": True, "model.d_latent": 64,
    "model.d_in": 8, "model.d_in_proj": 64, "model.d_hidden": 256, "model.num_layers": 1, "model.height": 32,
    "model.width": 32, "model.steps": 32, "model.rule": "delta", "model.output_tanh": True, "model.channels": 3,
    "discriminator.fmap_max": 64, "discriminator.attn_res_layers": [], "discriminator.small_head_attention": False,
    "discriminator.recon_size": 128, "discriminator.small_size": 32, "data.resolution": 32, "data.range": [-1, 1], "optim.lr": 2e-4,
    "optim.batch_size": 20, "ema.beta": 0.99, "ema.every": 10, "ema.start": 0, "ema.copy_every": 0,
    "loss.augment": [], "loss.augment_prob": 0.0, "steps": 900, "seed": 0,
}

ROUNDS = {
    1: {  # one change at a time against BEFORE
        "before": {},
        "no EMA (G itself)": {"ema.beta": 0.0, "ema.every": 1},
        "range [0, 1]": {"data.range": [0, 1]},
        "one channel": {"model.channels": 1},
        "reconstruction 32x32": {"discriminator.recon_size": 32},
        "D lr / 4": {"optim.d_lr_mult": 0.25},
        "DiffAugment": {"loss.augment": ["translation", "cutout"], "loss.augment_prob": 1.0},
        "T = 16": {"model.steps": 16},
        "D fmap_max 32": {"discriminator.fmap_max": 32},
    },
    2: {  # 16 x 16 digits (the demo's size), black canvas, grey, cheap reconstruction; lr and D against time
        "16px lr 2e-4": {**(SMALL := {"data.resolution": 16, "model.height": 16, "model.width": 16, "model.steps": 16,
                                     "data.range": [0, 1], "model.channels": 1, "discriminator.recon_size": 16})},
        "16px lr 1e-3": {**SMALL, "optim.lr": 1e-3},
        "16px lr 1e-3, D lr / 4": {**SMALL, "optim.lr": 1e-3, "optim.d_lr_mult": 0.25},
        "16px lr 1e-3, DiffAugment": {**SMALL, "optim.lr": 1e-3, "loss.augment": ["translation"],
                                      "loss.augment_prob": 1.0},
    },
    3: {  # the round-2 winner against time: a shorter EMA, a larger lr, a smaller painter and D
        "lr 1e-3": {**SMALL, "optim.lr": 1e-3},
        "lr 1e-3, EMA 0.99 every step": {**SMALL, "optim.lr": 1e-3, "ema.every": 1},
        "lr 2e-3": {**SMALL, "optim.lr": 2e-3, "ema.every": 1},
        "lr 1e-3, d_hidden 128, D fmap 32": {**SMALL, "optim.lr": 1e-3, "ema.every": 1, "model.d_hidden": 128,
                                              "discriminator.fmap_max": 32},
    },
    4: {  # what each change did, at the demo's size: added one after another, then each taken out of the last
        "before, at 16x16": (AT_16 := {"data.resolution": 16, "model.height": 16, "model.width": 16,
                                       "model.steps": 16}),
        "+ range [0, 1]": (STEP_1 := {**AT_16, "data.range": [0, 1]}),
        "+ one channel": (STEP_2 := {**STEP_1, "model.channels": 1}),
        "+ lr 2e-3": (STEP_3 := {**STEP_2, "optim.lr": 2e-3}),
        "+ EMA 0.99 every step": (STEP_4 := {**STEP_3, "ema.every": 1}),
        "+ D at the image's size": (FINAL := {**STEP_4, "discriminator.recon_size": 16,
                                              "discriminator.small_size": 16}),
        "final, range [-1, 1]": {**FINAL, "data.range": [-1, 1]},
        "final, lr 2e-4": {**FINAL, "optim.lr": 2e-4},
    },
    5: {  # the pixel range at the final recipe, 3 seeds each, interleaved (a black or a mid-grey empty canvas)
        f"range {label}, seed {seed}": {**FINAL, "data.range": value, "seed": seed}
        for seed in range(3) for label, value in (("[0, 1]", [0, 1]), ("[-1, 1]", [-1, 1]))
    },
}


def run_variant(name: str, overrides: dict, out: Path, steps: int, num_images: int, threads: int,
                every: int | None = None) -> dict:
    folder = out / name.replace(" ", "_").replace("/", "_").replace("(", "").replace(")", "").replace(",", "")
    settings = {**BEFORE, **overrides, "steps": steps, "fid.every": every or steps, "fid.num_images": num_images,
                "fid.dims": 2048, "checkpoint.every": every or steps, "log_every": 25}
    if not (folder / "summary.json").is_file():
        command = [sys.executable, "-m", "fpa_core.train", "--config", "digits", "--out", str(folder), "-q"]
        for key, value in settings.items():
            command += ["--set", f"{key}={json.dumps(value)}"]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        start = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{name}: {result.stderr[-2000:]}")
        (folder / "wall_time_s").write_text(f"{time.perf_counter() - start:.1f}")
    summary = json.loads((folder / "summary.json").read_text())
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    losses = [r for r in records if "d_loss" in r]
    return {"name": name, "folder": folder, "final": summary["final"], "wall": float((folder / "wall_time_s").read_text()),
            "d_loss": losses[-1]["d_loss"], "g_loss": losses[-1]["g_loss"],
            "step_s": summary["wall_time_s"] / max(summary["steps"], 1)}


def contact_sheet(results: list[dict], path: Path) -> None:
    font = ImageFont.load_default()
    grids = [(r["name"], Image.open(sorted((r["folder"] / "samples").glob("grid-*.png"))[-1])) for r in results]
    width = max(g.width for _, g in grids)
    sheet = Image.new("RGB", (width * 3, (max(g.height for _, g in grids) + 14) * -(-len(grids) // 3)), "white")
    for i, (name, grid) in enumerate(grids):
        x, y = (i % 3) * width, (i // 3) * (grid.height + 14)
        ImageDraw.Draw(sheet).text((x + 2, y), name, fill="black", font=font)
        sheet.paste(grid, (x, y + 14))
    sheet.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--round", type=int, choices=sorted(ROUNDS), default=1)
    parser.add_argument("--out", type=Path, default=Path("runs/recipe"))
    parser.add_argument("--steps", type=int, default=900)
    parser.add_argument("--num-images", type=int, default=500)
    parser.add_argument("--every", type=int, help="evaluate every N steps too (default: only at the end)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--only", action="append", help="run only these variants (repeatable)")
    args = parser.parse_args()
    variants = {k: v for k, v in ROUNDS[args.round].items() if not args.only or k in args.only}
    out = args.out / f"round{args.round}"
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda item: run_variant(*item, out, args.steps, args.num_images, threads,
                                                         args.every), variants.items()))
    lines = [f"{args.steps} steps, {args.num_images} samples against all 1,797 digits, 2048-d calibrated features, "
             f"{args.jobs} runs at a time on {threads} thread(s) each.\n",
             "| variant | FID | KID | precision | recall | D loss | G loss | s/step |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        f = r["final"]
        lines.append(f"| {r['name']} | {f['fid']:.1f} | {f['kid']:.4f} | {f['precision']:.2f} | {f['recall']:.2f} | "
                     f"{r['d_loss']:.3f} | {r['g_loss']:.3f} | {r['step_s']:.3f} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    contact_sheet(results, out / "grids.png")
    print("\n".join(lines))
    print(f"\ngrids: {out / 'grids.png'}")


if __name__ == "__main__":
    main()
