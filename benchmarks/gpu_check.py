"""GPU check: the celeba generator's speed and 200 bf16 training steps on one CUDA GPU.

    python benchmarks/gpu_check.py --out gpu_report.json

Needs only PyTorch (and pytorch-fid for the final FID). The data are synthetic 64x64 images made here:
this measures speed, not quality. The paper: about 55 images/s at batch 1 on a V100 (Appendix C.2).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fpa_core.model import FPAGenerator
from fpa_core.train.config import load_config
from fpa_core.train.trainer import Trainer


def images_per_second(generator: FPAGenerator, batch: int, seconds: float = 5.0) -> float:
    z = torch.randn(batch, generator.config.d_latent, device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        for _ in range(5):
            generator(z)
        torch.cuda.synchronize()
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            generator(z)
            count += batch
        torch.cuda.synchronize()
    return count / (time.perf_counter() - start)


def synthetic_folder(root: Path, n: int = 2000) -> Path:
    rng = np.random.default_rng(0)
    folder = root / "images"
    folder.mkdir()
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"{i:05d}.png")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="gpu_report.json")
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    assert torch.cuda.is_available(), "this check needs a CUDA GPU"
    report = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "python": platform.python_version()}

    generator = FPAGenerator.from_preset("celeba").cuda().eval()
    for batch in (1, 64):
        report[f"generator_images_per_s_batch{batch}"] = round(images_per_second(generator, batch), 1)
        print(f"celeba generator, batch {batch}: {report[f'generator_images_per_s_batch{batch}']} images/s", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        folder = synthetic_folder(Path(tmp))
        config = load_config("celeba", {"data": {"dataset": str(folder)}, "steps": args.steps,
                                        "fid": {"every": args.steps, "num_images": 2000, "backbone": "inception-random"},
                                        "checkpoint": {"every": args.steps}, "log_every": 20, "device": "cuda",
                                        "precision": "bf16"})
        trainer = Trainer(config, str(Path(tmp, "run")))
        for _ in range(3):  # warm-up: cuDNN autotuning, allocator
            trainer._train_step()
        torch.cuda.synchronize()
        start = time.perf_counter()
        summary = trainer.train()
        elapsed = time.perf_counter() - start
    fid_s = elapsed - summary["wall_time_s"] + 0.0
    report.update({"train_steps": args.steps, "train_wall_s": round(elapsed, 1),
                   "train_steps_per_s": round(args.steps / summary["wall_time_s"], 2),
                   "final_fid_uncalibrated": summary["final"]["fid"], "batch": 20, "autocast": "bf16",
                   "max_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2), "overhead_s": round(fid_s, 1)})
    print(f"training: {args.steps} steps at batch 20, bf16: {report['train_steps_per_s']} steps/s "
          f"(peak memory {report['max_memory_gib']} GiB)", flush=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
