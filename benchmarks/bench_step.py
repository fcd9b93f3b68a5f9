"""The training step on this CPU, this checkout against another one, interleaved, with its breakdown.

    git worktree add /tmp/baseline <commit>                     # the code to compare with
    python benchmarks/bench_step.py --baseline /tmp/baseline --config digits --config celeba [--rounds 3]

Each round runs, for each config, a fresh process of each checkout in turn (baseline, this one), so that
both see the same machine: it builds that checkout's Trainer on synthetic images of the config's size
(CelebA is not on this machine; the step does not depend on the pixels), takes a few warm-up steps, then
times whole gradient-penalty cycles (loss.gp_every steps) of ``Trainer._train_step``. The breakdown times
each part's share of a step on its own, the way the step uses it:

    G: LSTM (input generator + LSTM), update net, rule    one forward without grad (D's step), one with backward
    D: main (blocks + logits), second head (32 x 32)      fakes and reals with parameter gradients, then fakes
                                                          with input gradients only (G's step)
    D: decoder                                            the reals' reconstruction, forward and backward
    gradient penalty                                      (a penalty step - a plain step) / gp_every
    optimisers                                            Adam on G and on D

"other" is the step minus these parts (losses, augmentation, batches, EMA, overheads). Medians over the
rounds; prints a Markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

WORKER = r'''
import json, statistics, sys, tempfile, time
import numpy as np, torch
from unittest import mock
try:  # the layout since the trainer's split; a baseline before it has the flat one
    import fpa_core.train.trainer as trainer_module
    from fpa_core.train.config import load_config
except ImportError:
    import fpa_core.trainer as trainer_module
    from fpa_core.train_config import load_config
from fpa_core import data
from fpa_core.rules import apply_rule

name, steps = sys.argv[1], int(sys.argv[2])
torch.manual_seed(0)
cfg = load_config(name, {"fid": {"backbone": "inception-random", "dims": 64}, "device": "cpu"})
res, B, T, c = cfg.data.resolution, cfg.optim.batch_size, cfg.model.steps, cfg.model.channels
images = np.random.default_rng(0).integers(0, 256, (512, res, res, 3), dtype=np.uint8)
fake_set = data.ImageSet("synthetic", images, "synthetic", "synthetic", 0, None)
with mock.patch.object(trainer_module, "load_images", lambda *a, **k: fake_set):
    t = trainer_module.Trainer(cfg, tempfile.mkdtemp())
G, D = t.G, t.D
memory_format = getattr(D, "memory_format", torch.contiguous_format)

def clock(fn, repeats=3):
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats

# whole steps: warm up, then gp cycles
every = max(cfg.loss.gp_every, 1)
while t.step % every != 1:
    t._train_step(); t.step += 1
plain, penalty = [], []
for _ in range(steps):
    start = time.perf_counter(); t._train_step(); elapsed = time.perf_counter() - start
    (penalty if cfg.loss.gp_every and t.step % cfg.loss.gp_every == 0 else plain).append(elapsed)
    t.step += 1
step = (sum(plain) + sum(penalty)) / (len(plain) + len(penalty))

parts = {}
z = torch.randn(B, cfg.model.d_latent)
def lstm():
    return G.sequence_processor(G.input_generator(z, T), z)
def g_part(forward):
    def run():
        with torch.no_grad():
            forward()
        out = forward()
        (sum(o.sum() for o in out) if isinstance(out, tuple) else out.sum()).backward()
    return run
parts["G: LSTM"] = clock(g_part(lstm))
h = lstm().detach().requires_grad_()
parts["G: update net"] = clock(g_part(lambda: G.update_net(h)))
k, v, lr = (x.detach().transpose(1, 2).reshape(B * c, T, *x.shape[3:]).requires_grad_() for x in G.update_net(h))
parts["G: rule"] = clock(g_part(lambda: apply_rule(cfg.model.rule, k, v, lr)))

x = torch.rand(B, c, res, res).contiguous(memory_format=memory_format)
both = torch.cat([x, x]).contiguous(memory_format=memory_format)
batched = hasattr(D, "judge")
def trunk(inp):
    hh = D.stem(inp)
    for block in D.blocks:
        hh = block(hh)
    return D.to_logits(hh), hh
def d_part(forward):
    def run():
        D.requires_grad_(True)
        for inp in ([both] if batched else [x, x]):
            forward(inp)[0].sum().backward()
        D.requires_grad_(False)
        forward(x.clone().requires_grad_())[0].sum().backward()
        D.requires_grad_(True)
    return run
parts["D: main"] = clock(d_part(trunk))
parts["D: second head"] = clock(d_part(lambda inp: (D.to_logits_small(inp),)))
feats = trunk(x)[1].detach()
parts["D: decoder"] = clock(lambda: D.reconstruction_loss(x, [feats] * 2, None).backward())
parts["gradient penalty"] = max(0.0, statistics.mean(penalty) - statistics.mean(plain)) / every if penalty else 0.0
parts["optimisers"] = clock(lambda: (t.opt_g.step(), t.opt_d.step()))
parts["other"] = max(0.0, step - sum(parts.values()))
print(json.dumps({"step": step, "parts": parts}))
'''


def run(code: str, config: str, steps: int) -> dict:
    env = {**os.environ, "PYTHONPATH": code, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run([sys.executable, "-c", WORKER, config, str(steps)], capture_output=True, text=True,
                            env=env, cwd=code, timeout=3600, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{code} {config}: {result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", required=True, help="a checkout of the code to compare with")
    parser.add_argument("--config", action="append", required=True, help="a packaged training config (repeatable)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, help="timed steps per process (default: 40 for digits, else 4)")
    args = parser.parse_args()
    here = str(Path(__file__).resolve().parent.parent)
    codes = {"before": str(Path(args.baseline).resolve()), "after": here}
    results = {(config, label): [] for config in args.config for label in codes}
    for round_ in range(args.rounds):
        for config in args.config:
            steps = args.steps or (40 if config == "digits" else 4)
            for label, code in codes.items():
                results[config, label].append(run(code, config, steps))
                print(f"round {round_ + 1}, {config}, {label}: {results[config, label][-1]['step']:.3f} s/step",
                      file=sys.stderr, flush=True)
    print(f"torch threads: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}\n")
    for config in args.config:
        before, after = results[config, "before"], results[config, "after"]
        step_b, step_a = (statistics.median(r["step"] for r in rs) for rs in (before, after))
        print(f"{config}: {step_b * 1000:.0f} ms -> {step_a * 1000:.0f} ms per step, {step_b / step_a:.2f}x "
              f"(median of {args.rounds} interleaved rounds)\n")
        print("| part | before (ms) | after (ms) |\n|---|---:|---:|")
        for part in before[0]["parts"]:
            b, a = (statistics.median(r["parts"][part] for r in rs) * 1000 for rs in (before, after))
            print(f"| {part} | {b:.0f} | {a:.0f} |")
        print(f"| **step** | **{step_b * 1000:.0f}** | **{step_a * 1000:.0f}** |\n")


if __name__ == "__main__":
    main()
