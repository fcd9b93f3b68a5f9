"""The training step on this CPU: the authors' reference code (IDSIA/fpainter) against ours, interleaved.

    python benchmarks/bench_authors.py --authors /tmp/fpainter/code --config celeba --config digits [--rounds 3]
        [--authors-python /tmp/authors-venv/bin/python] [--steps N] [--their-steps N] [--threads N]

``--authors`` is a folder holding their ``code/`` files (painter.py, lightweight_gan.py, model_utils.py,
unet.py, diff_augment.py, version.py); nothing of theirs is copied here, it is imported from there. Their
imports need einops and kornia: ``--authors-python`` is an interpreter that has them (by default
/tmp/authors-venv/bin/python when it exists). Each round runs, for each config, one fresh process of
theirs and one of ours (the order alternating from round to round), so that both see the same machine,
and prints a Markdown table of the medians over the rounds: ms per step and the speed-up (theirs / ours).

What is timed, on both sides: whole training steps (D's update, then G's), one warm-up step first, then
whole gradient-penalty cycles (both penalise every 4th step), on synthetic images of the config's size
(the step does not depend on the pixels): ``--steps`` steps of ours (default, as bench_step.py: 40 for
digits, 4 otherwise) and ``--their-steps`` of theirs (default: ``--steps`` if given, else 4, one cycle;
their step takes tens of seconds on this CPU, mostly in the 32x32 head's LinearAttention, F.unfold and
4-D einsums, about 5 s per 20-image forward on one thread).

Ours: bench_step.py's worker (``WORKER``) up to the end of its timed steps:
``fpa_core.train.trainer.Trainer._train_step`` of the packaged config, after one warm-up step. This script
adds only a record of the last step's losses and the parameter counts; it leaves out the worker's
breakdown of the parts (not used here).

Theirs: ``painter.Trainer.train()``, their whole training-loop iteration, with ``model_type
lstm_delta_split_v2`` (the v2-input-generator FPA, their main model), which builds
``PainterLSTMDeltaTimeSplitLatentGANv2``: the generator ``LSTMDeltaTimeSplitLatentGeneratorV2``, their
``Discriminator``, Adam (0.5, 0.9) for both, hinge losses on both heads, the reals' reconstruction loss,
the gradient penalty when ``steps % 4 == 0``. The Trainer gets the arguments their main.py would give it
(``train_from_folder``: attn_res_layers [32], disc_output_size 1, no augmentation, no AMP, no
anti-aliasing blur) with the model, batch and optimiser of our config (``their_trainer_args``):
d_latent -> latent_dim, d_in -> mini_latent_dim, d_in_proj -> mini_input_size, d_hidden ->
rnn_hidden_size, num_layers, steps -> num_decoding_steps, input_tanh -> v2_input_sigmoid (which applies
tanh), latent_to_init -> use_latent_to_init, output_tanh -> out_tanh, use_softmax (our keys always go
through a softmax), channels 1 -> greyscale, and the discriminator's fmap_max and attn_res_layers.
To run their CUDA-only code on the CPU the worker passes their import-time ``torch.cuda.is_available()``
assert, makes ``.cuda()`` a no-op, and gives painter.py a ``torch`` whose ``device()`` is the CPU (their
loss totals are built on ``torch.device('cuda:0')``); it stubs ``Trainer.save`` and
``Trainer.evaluate`` (checkpoints and sample grids, which their loop writes at steps % 1000 == 0 and
steps % 100 == 0: I/O, not the step); its loader yields a fresh clone of one of 8 random batches (their
DataLoader decodes in worker processes and yields a new tensor per batch). Their step counter starts
at 4, so that the timed window holds no ``reset_parameter_averaging`` (a G -> EMA copy their loop makes
at steps 2, 1002, ... up to 25 K); their EMA update only starts after 20 K steps, and bench_step times
ours without its EMA, so neither side times an EMA.

How their step differs from ours (fpa_core.train.trainer.Trainer._train_step), for the same config:
  - D's step: they run D twice, on the fakes and then on the reals; we run one batch of fakes and reals
    (``D.judge``) except on penalty steps, where the double backward must span the reals alone.
  - They set requires_grad on the reals at every step, so every D backward also computes the gradient
    with respect to the real images; we set it on penalty steps only.
  - G's step: their D keeps requires_grad, so G's backward also computes (and the next D step discards)
    D's parameter gradients; we switch D's off for G's step.
  - The painting: their generator applies the delta rule in a Python loop of T steps of ``torch.bmm``;
    ours solves it in parallel (``model.parallel``, a triangular solve). Their LSTM is time-major, ours
    batch-major.
  - On the CPU our D runs in channels_last memory format (``D.to_channels_last()``); theirs is contiguous.
  - They read four losses back with ``.item()`` per step (plus NaN checks); we sync once per step.
  - Real batches: ours are drawn from a uint8 array and converted in the step (``_real_batch``); theirs
    arrive as float tensors from the loader.
  - Losses and weights are the same (hinge on both heads, reconstruction weight 1, penalty weight 10
    every 4 steps); their D's logits are low for reals, ours high (a sign, no cost).
  - With these arguments the parameter counts match for celeba (G 13,587,459, D 12,326,632); the table
    prints both sides' counts.
  - Configs their code cannot express are listed under the table (``mismatches``): for digits, their
    32x32 head always has its two attention blocks (ours has small_head_attention: false) and their
    reconstruction is always 128 x 128 (ours recon_size 32); main.py hard-codes attn_res_layers [32],
    but their Trainer takes ours ([] for digits), so that is what it gets.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from bench_step import WORKER  # ours: the same worker bench_step.py runs

from fpa_core.train.config import TrainConfig, load_config

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

THREADS = r'''
import os, torch
if os.environ.get("BENCH_THREADS"):
    torch.set_num_threads(int(os.environ["BENCH_THREADS"]))
'''

# bench_step's worker up to its timings (its breakdown of the parts, which this table does not use, is
# left out), with the last step's losses recorded and reported next to them
_BREAKDOWN = "\nparts = {}\n"
assert _BREAKDOWN in WORKER, "bench_step.WORKER changed: where do its timed steps end?"
OURS_WORKER = THREADS + r'''
import fpa_core.train.trainer as _trainer_module
_losses = {}
_train_step = _trainer_module.Trainer._train_step
def _recorded(self):
    out = _train_step(self)
    _losses.update(out)
    return out
_trainer_module.Trainer._train_step = _recorded
''' + WORKER.split(_BREAKDOWN)[0] + r'''
print(json.dumps({"step": step, "plain": statistics.mean(plain) if plain else None,
                  "penalty": statistics.mean(penalty) if penalty else None, "losses": _losses,
                  "params": {"G": sum(p.numel() for p in G.parameters()), "D": sum(p.numel() for p in D.parameters())}}))
'''

AUTHORS_WORKER = THREADS + r'''
import itertools, json, random, statistics, sys, tempfile, time, types

code, steps, trainer_args = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
torch.manual_seed(0)
random.seed(0)

# their code is for one CUDA GPU: pass its import-time assert, make .cuda() a no-op, and give painter.py a
# torch whose device() is the CPU (Trainer.train puts its loss totals on torch.device("cuda:0"))
sys.path.insert(0, code)
is_available = torch.cuda.is_available
torch.cuda.is_available = lambda: True
import painter
torch.cuda.is_available = is_available
torch.nn.Module.cuda = lambda self, *args, **kwargs: self
torch.Tensor.cuda = lambda self, *args, **kwargs: self
cpu_torch = types.ModuleType("torch")
cpu_torch.__getattr__ = lambda name: getattr(torch, name)
cpu_torch.device = lambda *args, **kwargs: torch.device("cpu")
painter.torch = cpu_torch

folder = tempfile.mkdtemp()
t = painter.Trainer(base_dir=folder, fid_real_path=folder + "/real", **trainer_args)
t.init_GAN()
t.save = t.evaluate = lambda *args, **kwargs: None  # checkpoints and sample grids: I/O, not the step
channels = 1 if t.greyscale else 3
pool = torch.rand(8, t.batch_size, channels, t.image_size, t.image_size)  # their range, [0, 1]
t.loader = (batch.clone() for batch in itertools.cycle(pool))  # a new tensor per batch, as a DataLoader's

t.steps = 4  # no reset_parameter_averaging (steps % 1000 == 2) in the timed window
t.train()  # warm-up: a penalty step
plain, penalty = [], []
for _ in range(steps):
    applies_gp = t.steps % 4 == 0
    start = time.perf_counter()
    t.train()
    (penalty if applies_gp else plain).append(time.perf_counter() - start)
print(json.dumps({"step": statistics.mean(plain + penalty), "plain": statistics.mean(plain) if plain else None,
                  "penalty": statistics.mean(penalty) if penalty else None,
                  "losses": {"d_loss": t.d_loss, "g_loss": t.g_loss, "gp": t.last_gp_loss,
                             "recon_loss": t.last_recon_loss},
                  "params": {"G": t.GAN.G.num_params(), "D": t.GAN.D.num_params()}}))
'''


def their_trainer_args(cfg: TrainConfig) -> tuple[dict, list[str]]:
    """painter.Trainer's keyword arguments for our config, as their main.py passes them, and what differs."""
    m, d, o, loss = cfg.model, cfg.discriminator, cfg.optim, cfg.loss
    res = cfg.data.resolution
    unsupported = {"model.input_generator": (m.input_generator, "v2"), "model.rule": (m.rule, "delta"),
                   "model.height/width": ((m.height, m.width), (res, res)), "stage": (cfg.stage, "fpa"),
                   "loss.gp_every": (loss.gp_every, 4), "loss.recon_weight": (loss.recon_weight, 1.0),
                   "optim.beta1/beta2": ((o.beta1, o.beta2), (0.5, 0.9))}
    bad = [f"{k} {ours} (theirs: {theirs})" for k, (ours, theirs) in unsupported.items() if ours != theirs]
    if bad:
        raise SystemExit(f"{cfg.data.dataset}: their code has no equivalent of {', '.join(bad)}")
    args = dict(  # main.py's train_from_folder fixes these whatever the command line says (but attn_res_layers)
        model_type="lstm_delta_split_v2", optimizer="adam", amp=False, antialias=False, dual_contrast_loss=False,
        freq_chan_attn=False, disc_output_size=d.disc_output_size, attn_res_layers=list(d.attn_res_layers),
        aug_prob=loss.augment_prob, aug_types=list(loss.augment) or ["cutout", "translation"],
        dataset_aug_prob=0.0, calculate_fid_every=None, gp_weight=loss.gp_weight,
        # the model
        image_size=res, greyscale=m.channels == 1, latent_dim=m.d_latent, mini_latent_dim=m.d_in,
        mini_input_size=m.d_in_proj, rnn_hidden_size=m.d_hidden, num_layers=m.num_layers,
        num_decoding_steps=m.steps, use_softmax=True, out_tanh=m.output_tanh, v2_input_sigmoid=m.input_tanh,
        use_latent_to_init=m.latent_to_init, fmap_max=d.fmap_max,
        # the batch and the optimisers
        batch_size=o.batch_size, gradient_accumulate_every=o.grad_accum, lr=o.lr, ttur_mult=o.d_lr_mult)
    mismatches = []
    if d.disc_output_size != 1:
        mismatches.append(f"discriminator.disc_output_size {d.disc_output_size}: main.py always passes 1")
    if list(d.attn_res_layers) != [32]:
        mismatches.append(f"discriminator.attn_res_layers {d.attn_res_layers}: main.py hard-codes [32]; "
                          f"their Trainer is given ours")
    if not d.small_head_attention:
        mismatches.append("discriminator.small_head_attention false: their 32x32 head always has its two "
                          "attention blocks")
    if d.recon_size != 128:
        mismatches.append(f"discriminator.recon_size {d.recon_size}: their reconstruction is always 128 x 128")
    if d.small_size != 32:
        mismatches.append(f"discriminator.small_size {d.small_size}: their second head always sees 32 x 32")
    if d.antialias:
        mismatches.append("discriminator.antialias true: main.py never blurs")
    if d.fmap_inverse_coef != 12:
        mismatches.append(f"discriminator.fmap_inverse_coef {d.fmap_inverse_coef}: their GAN always uses 12")
    if not m.parallel:
        mismatches.append("model.parallel false: ours runs the rule's loop too")
    return args, mismatches


def run(python: str, code: str, argv: list[str], cwd: str, threads: int | None) -> dict:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    if threads:
        env.update(BENCH_THREADS=str(threads), OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    result = subprocess.run([python, "-c", code, *argv], capture_output=True, text=True, env=env, cwd=cwd,
                            timeout=3600, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{python} {argv[:2]}: {result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--authors", required=True, help="the folder of IDSIA/fpainter's code/ files")
    default_python = "/tmp/authors-venv/bin/python"
    parser.add_argument("--authors-python", default=default_python if os.path.exists(default_python) else sys.executable,
                        help="an interpreter with torch, einops and kornia for their code")
    parser.add_argument("--config", action="append", required=True, help="a packaged training config (repeatable)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, help="timed steps per process (default: ours 40 for digits, else 4)")
    parser.add_argument("--their-steps", type=int, help="timed steps per process of theirs (default: --steps, else 4)")
    parser.add_argument("--threads", type=int, help="torch threads in every worker (default: torch's own)")
    args = parser.parse_args()
    authors = str(Path(args.authors).resolve())
    if not (Path(authors) / "painter.py").is_file():
        raise SystemExit(f"--authors {authors}: no painter.py there")

    plans = {config: their_trainer_args(load_config(config)) for config in args.config}
    results = {(config, side): [] for config in args.config for side in ("ours", "theirs")}
    for round_ in range(args.rounds):
        for config in args.config:
            steps = args.steps or (40 if config == "digits" else 4)
            their_steps = args.their_steps or args.steps or 4
            jobs = {"theirs": (args.authors_python, AUTHORS_WORKER,
                               [authors, str(their_steps), json.dumps(plans[config][0])], authors),
                    "ours": (sys.executable, OURS_WORKER, [config, str(steps)], str(ROOT))}
            for side in (("theirs", "ours") if round_ % 2 == 0 else ("ours", "theirs")):
                python, code, argv, cwd = jobs[side]
                r = run(python, code, argv, cwd, args.threads)
                results[config, side].append(r)
                losses = ", ".join(f"{k} {v:.4g}" for k, v in r["losses"].items() if v is not None)
                print(f"round {round_ + 1}, {config}, {side}: {r['step'] * 1000:.0f} ms/step ({losses})",
                      file=sys.stderr, flush=True)

    threads = args.threads or "torch's default"
    print(f"{os.cpu_count()} cores, threads: {threads}, load average {os.getloadavg()[0]:.1f}; medians of "
          f"{args.rounds} interleaved rounds\n")
    print("| config | ours (ms/step) | theirs (ms/step) | speed-up | G / D params, ours | G / D params, theirs |")
    print("|---|---:|---:|---:|---:|---:|")
    for config in args.config:
        ours, theirs = (statistics.median(r["step"] for r in results[config, side]) for side in ("ours", "theirs"))
        (po, pt) = (results[config, side][0]["params"] for side in ("ours", "theirs"))
        print(f"| {config} | {ours * 1000:.0f} | {theirs * 1000:.0f} | {theirs / ours:.2f}x | "
              f"{po['G']:,} / {po['D']:,} | {pt['G']:,} / {pt['D']:,} |")
    notes = [f"- {config}: {note}" for config in args.config for note in plans[config][1]]
    if notes:
        print("\nWhat their code cannot match:\n" + "\n".join(notes))


if __name__ == "__main__":
    main()
