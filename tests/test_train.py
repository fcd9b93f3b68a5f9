"""Training end to end on digits: every output, bit-exact resume, failure modes, S3 storage."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from fpa_core import checkpoint, pictures, storage
from fpa_core.config import ConfigError
from fpa_core.images import to_tensor
from fpa_core.train.config import REFERENCE_EMA, load_config, packaged_configs
from fpa_core.train.errors import NonFiniteLossError, RunExistsError
from fpa_core.train.trainer import Trainer

TINY = {
    "model": {"d_latent": 16, "d_in": 4, "d_in_proj": 16, "d_hidden": 32, "num_layers": 1,
              "height": 16, "width": 16, "steps": 8},
    "discriminator": {"fmap_max": 16, "attn_res_layers": [], "small_head_attention": False},
    "data": {"dataset": "digits", "resolution": 16},
    "optim": {"batch_size": 4},
    "fid": {"every": 4, "num_images": 24, "dims": 64, "batch_size": 24},
    "checkpoint": {"every": 2, "keep": 2},
    "pictures": {"samples": 4, "paintings": 2},
    "ema": {"every": 1},
    "steps": 8,
    "log_every": 1,
    "device": "cpu",
}


def tiny_config(dataset="digits", **top):
    return load_config("digits", {**TINY, "data": {"dataset": str(dataset), "resolution": 16}, **top})


def losses_by_step(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: (r["d_loss"], r["g_loss"], r["recon_loss"], r["gp"]) for r in records if "d_loss" in r}


def test_a_short_run_writes_every_output(tmp_path, image_folder):
    out = tmp_path / "run"
    summary = Trainer(tiny_config(image_folder), str(out)).train()
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "config.yaml", "metrics.jsonl", "painting",
                                                     "samples", "summary.json"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.pt", "latest-00000006.pt",
                                                                       "latest-00000008.pt"]
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["grid-00000004.png", "grid-00000008.png"]
    assert {p.name for p in (out / "painting").iterdir()} == {"strip-00000004.png", "painting-00000004.gif",
                                                              "strip-00000008.png", "painting-00000008.gif"}
    strip = Image.open(out / "painting" / "strip-00000008.png")
    cell = 16 * pictures.scale_for(16, 16) + pictures.GAP  # 16 x 16 pictures, enlarged 4 times
    # T = 8 columns; updates and canvases for 2 latents; a title and a row of step numbers on top
    assert strip.size == (8 * cell + pictures.GAP, 2 * pictures.LABEL + 2 * 2 * cell + pictures.GAP)

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "d_loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 9))
    assert all(r["images_per_s"] > 0 for r in steps)
    fids = [r for r in records if "fid" in r]
    assert [r["step"] for r in fids] == [4, 8] and all(r["fid_calibrated"] is True for r in fids)
    assert all({"kid", "kid_std", "precision", "recall"} <= set(r) for r in fids)

    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == summary
    assert summary["steps"] == 8 and summary["fid_calibrated"] is True and summary["metric"] == "fid"
    assert summary["final"]["fid"] == fids[-1]["fid"] and summary["final"]["kid"] == fids[-1]["kid"]
    assert summary["best"]["fid"] == min(r["fid"] for r in fids) and summary["wall_time_s"] > 0
    # The best is named by what it is, the best evaluation by fid.metric: no key claims a "best FID".
    assert not {"best_fid", "best_kid", "best_fid_step", "final_fid", "final_kid", "fid_history"} & set(summary)
    assert summary["best"]["step"] == min(fids, key=lambda r: r["fid"])["step"]

    state = checkpoint.load(str(out / "checkpoints" / "latest-00000008.pt"))
    assert {"generator", "generator_ema", "discriminator", "opt_g", "opt_d", "rng", "config", "dataset",
            "evaluations", "fid_weights", "step"} <= set(state)
    assert state["dataset"]["fingerprint"] and state["fid_calibrated"] is True
    # The EMA copy moved away from its start and differs from the raw generator.
    assert not torch.equal(state["generator_ema"]["update_net.slow.weight"], state["generator"]["update_net.slow.weight"])


def test_a_resumed_run_reproduces_the_uninterrupted_run_bit_for_bit(tmp_path, image_folder):
    Trainer(tiny_config(image_folder), str(tmp_path / "straight")).train()
    Trainer(tiny_config(image_folder, steps=5), str(tmp_path / "resumed")).train()  # checkpoints at 4 (with FID) and 5
    # Lose the stretch after step 4, as a crash right after that checkpoint would.
    (tmp_path / "resumed" / "checkpoints" / "latest-00000005.pt").unlink()
    resumed = Trainer.resume(str(tmp_path / "resumed"), {"steps": 8})
    assert resumed.step == 4
    resumed.train()
    straight, again = losses_by_step(tmp_path / "straight"), losses_by_step(tmp_path / "resumed")
    assert sorted(again) == list(range(1, 9))  # step 5 was logged twice, but only the replay is kept
    assert again == straight
    a = checkpoint.load(str(tmp_path / "straight" / "checkpoints" / "latest-00000008.pt"))
    b = checkpoint.load(str(tmp_path / "resumed" / "checkpoints" / "latest-00000008.pt"))
    for key in a["generator"]:
        assert torch.equal(a["generator"][key], b["generator"][key]), key
    assert a["evaluations"] == b["evaluations"]


def test_a_non_finite_loss_stops_the_run_naming_the_step(tmp_path, monkeypatch, image_folder):
    trainer = Trainer(tiny_config(image_folder), str(tmp_path / "run"))
    real_step = trainer._train_step

    def step_that_explodes():
        losses = real_step()
        if trainer.step == 2:  # the third step
            losses["d_loss"] = float("nan")
        return losses

    monkeypatch.setattr(trainer, "_train_step", step_that_explodes)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 3 \(d_loss=nan\).*latest-00000002\.pt"):
        trainer.train()
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["latest-00000002.pt"]


def test_an_existing_run_is_never_overwritten(tmp_path, image_folder):
    Trainer(tiny_config(image_folder, steps=2), str(tmp_path / "run")).train()
    with pytest.raises(RunExistsError, match="already holds a run .*--resume"):
        Trainer(tiny_config(image_folder, steps=2), str(tmp_path / "run"))
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        Trainer.resume(str(tmp_path / "empty"))


def test_resume_skips_a_truncated_newest_checkpoint(tmp_path, image_folder, caplog):
    run = tmp_path / "run"
    Trainer(tiny_config(image_folder, steps=4), str(run)).train()  # latest-2 and latest-4
    newest = run / "checkpoints" / "latest-00000004.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # a kill or a full disk mid-write
    with caplog.at_level("WARNING"):
        trainer = Trainer.resume(str(run), {"steps": 6})
    assert trainer.step == 2 and "skipping" in caplog.text and "latest-00000004.pt" in caplog.text
    older = run / "checkpoints" / "latest-00000002.pt"
    older.write_bytes(b"")
    with pytest.raises(ValueError, match="none of the 2 checkpoints .* can be read"):
        Trainer.resume(str(run), {"steps": 6})


def test_inputs_that_used_to_slip_through_get_one_message(tmp_path):
    from conftest import run_main
    from fpa_core.train.__main__ import main as train_main

    one = tmp_path / "one"
    one.mkdir()
    Image.new("RGB", (20, 20), (200, 10, 10)).save(one / "only.png")
    with pytest.raises(ValueError, match="holds 1 readable image.*at least 2"):
        Trainer(tiny_config(one), str(tmp_path / "run"))
    result = run_main(train_main, "--config", "digits", "--out", "s3://", "--steps", "1")
    assert result.returncode == 2 and "--out s3://: an S3 location must name a bucket" in result.stderr
    assert not (tmp_path / "s3:").exists() and not pathlib.Path("s3:").exists()
    with pytest.raises(ConfigError, match=r"loss\.gp_weight: must be a finite number >= 0, got inf"):
        tiny_config(loss={"gp_weight": float("inf")})


def test_resume_refuses_a_changed_dataset(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(6):
        Image.new("RGB", (20, 20), (40 * i, 10, 200)).save(folder / f"{i}.png")
    Trainer(tiny_config(folder, steps=2), str(tmp_path / "run")).train()
    Image.new("RGB", (20, 20), (0, 255, 0)).save(folder / "new.png")
    with pytest.raises(ValueError, match="the dataset changed"):
        Trainer.resume(str(tmp_path / "run"), {"steps": 4})


def test_config_errors_name_every_field():
    with pytest.raises(ConfigError) as e:
        load_config("digits", {"model": {"d_hiden": 3}, "optim": {"lr": -1.0}, "fid": {"dims": 100}})
    message = str(e.value)
    assert "model.d_hiden: unknown field" in message
    assert "optim.lr: must be a positive, finite number, got -1.0" in message
    assert "fid.dims: 100 is not allowed; choose one of 64, 192, 768, 2048" in message
    assert len(e.value.errors) == 3
    with pytest.raises(ConfigError, match="data.resolution: 24 does not match the painted image 32 x 32"):
        load_config("digits", {"data": {"resolution": 24}})


def test_packaged_configs_carry_the_table3_generators():
    from fpa_core.model import preset_config

    assert {"digits", "celeba", "metfaces", "afhq-cat", "afhq-dog", "afhq-wild", "lsun-church"} <= set(packaged_configs())
    for name in ("celeba", "metfaces", "afhq-cat", "afhq-dog", "afhq-wild", "lsun-church"):
        cfg = load_config(name)
        assert cfg.model == preset_config(name)
        assert (cfg.optim.batch_size, cfg.optim.lr, cfg.fid.every, cfg.data.dataset) == (20, 2e-4, 5000, name)
        assert cfg.ema == REFERENCE_EMA, name


def test_checkpoints_and_outputs_on_s3(s3_bucket, image_folder):
    out = f"s3://{s3_bucket}/runs/tiny"
    summary = Trainer(tiny_config(image_folder, steps=4), out).train()
    names = storage.list_names(out)
    assert {"checkpoints", "config.yaml", "metrics.jsonl", "painting", "samples", "summary.json"} <= set(names)
    assert summary["checkpoints"]["best"] == f"{out}/checkpoints/best.pt"
    assert storage.list_names(f"{out}/checkpoints") == ["best.pt", "latest-00000002.pt", "latest-00000004.pt"]
    resumed = Trainer.resume(out, {"steps": 6})
    assert resumed.step == 4
    resumed.train()
    assert json.loads(storage.read_bytes(f"{out}/summary.json"))["steps"] == 6
    # The real statistics were cached in the bucket for the next run.
    assert storage.list_names(f"s3://{s3_bucket}/.fpa-cache/fid")


@pytest.mark.process
def test_train_cli(tmp_path, image_folder):
    out = tmp_path / "cli-run"
    sets = ["--dataset", str(image_folder), "--set", "model.d_hidden=16", "--set", "model.height=16", "--set", "model.width=16",
            "--set", "model.steps=4", "--set", "data.resolution=16", "--set", "discriminator.fmap_max=16",
            "--set", "discriminator.small_head_attention=false", "--set", "discriminator.attn_res_layers=[]",
            "--set", "optim.batch_size=2", "--set", "fid.dims=64", "--set", "fid.num_images=8",
            "--set", "pictures.samples=4", "--set", "pictures.paintings=1"]
    cmd = [sys.executable, "-m", "fpa_core.train", "--config", "digits", "--steps", "2", "--out", str(out), *sets]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "best (step 2): FID " in result.stdout and "KID" in result.stdout and "uncalibrated" not in result.stdout
    last = json.loads(result.stdout.strip().splitlines()[-1])
    assert last["steps"] == 2 and last["fid_calibrated"] is True and last["best"]["kid"] is not None

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "already holds a run" in again.stderr

    bad = subprocess.run([sys.executable, "-m", "fpa_core.train", "--config", "digits", "--out", str(tmp_path / "x"),
                          "--set", "model.rule=hebb", "--set", "optim.batch_size=0"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2
    assert "model.rule: 'hebb' is not allowed" in bad.stderr and "optim.batch_size: must be a positive" in bad.stderr
    assert not (tmp_path / "x").exists()  # stopped before any work


def test_the_ema_schedule_at_its_boundaries(tmp_path, image_folder):
    """Copies of G at multiples of copy_every up to copy_until; averages at multiples of every from start."""
    trainer = Trainer(tiny_config(image_folder, ema={"beta": 0.75, "every": 10, "start": 40, "copy_every": 20,
                                                      "copy_until": 40}), str(tmp_path / "run"))
    weight = next(trainer.G.parameters())

    def ema_after(step, g, ema):
        with torch.no_grad():
            weight.fill_(g)
            next(trainer.G_ema.parameters()).fill_(ema)
        trainer.step = step
        trainer._update_ema()
        return next(trainer.G_ema.parameters()).flatten()[0].item()

    assert ema_after(20, 1.0, 0.0) == 1.0  # a copy
    assert ema_after(30, 1.0, 0.0) == 0.0  # before start: left alone
    assert ema_after(40, 1.0, 0.0) == 1.0  # the last copy wins over the first average
    assert ema_after(50, 1.0, 0.0) == pytest.approx(0.25)  # 0.75 * 0 + 0.25 * 1
    assert ema_after(60, 1.0, 0.0) == pytest.approx(0.25)  # past copy_until: averaged, not copied
    assert ema_after(61, 1.0, 0.0) == 0.0  # not a multiple of every


def test_the_reference_ema_schedule_falls_on_the_authors_steps(tmp_path, image_folder):
    """The authors' code, 0-based step r: EMA when r % 10 == 0 and r > 20000; copy when r <= 25000 and
    r % 1000 == 2. Ours counts from 1 (s = r + 1): the same steps, over their first 30 K."""
    from dataclasses import asdict

    trainer = Trainer(tiny_config(image_folder, ema=asdict(REFERENCE_EMA)), str(tmp_path / "run"))
    weight, ema = next(trainer.G.parameters()), next(trainer.G_ema.parameters())
    seen = {}
    for r in range(30_000):
        with torch.no_grad():
            weight.fill_(1.0)
            ema.fill_(0.0)
        trainer.step = r + 1
        trainer._update_ema()
        value = ema.flatten()[0].item()
        if value:
            seen[r] = "copy" if value == 1.0 else "ema"
    reference = {r: "ema" for r in range(30_000) if r % 10 == 0 and r > 20_000}
    reference.update({r: "copy" for r in range(30_000) if r <= 25_000 and r % 1000 == 2})
    assert seen == reference
    assert seen[2] == "copy" and seen[24_002] == "copy" and 25_002 not in seen and min(
        r for r, kind in seen.items() if kind == "ema") == 20_010


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_precision_decides_what_runs_in_bfloat16(tmp_path, image_folder, precision):
    """fp32 (the default, as the authors' code): everything in float32. bf16: D in bfloat16 under autocast,
    G's LSTM, update net and rule in float32; the step's losses stay finite."""
    trainer = Trainer(tiny_config(image_folder, precision=precision, steps=4), str(tmp_path / "run"))
    seen = {}

    def keep(name, dtype_of):
        def hook(module, inputs, output):  # returns None: the output stays as it is
            seen.setdefault(name, dtype_of(output))
        return hook

    trainer.D.register_forward_hook(keep("D", lambda out: out.logits.dtype))
    trainer.G.sequence_processor.lstm.register_forward_hook(keep("lstm", lambda out: out[0].dtype))
    trainer.G.update_net.register_forward_hook(keep("rule_inputs", lambda out: out[0].dtype))
    trainer.step = 1  # no gradient penalty at this step
    losses = trainer._train_step()
    assert all(np.isfinite(v) for v in losses.values())
    want = torch.bfloat16 if precision == "bf16" else torch.float32
    assert seen == {"D": want, "lstm": torch.float32, "rule_inputs": torch.float32}


def test_unit_range_and_one_channel_train_score_and_draw(tmp_path, image_folder):
    """Grey images in [0, 1] (a black empty canvas), painted in one channel, as the authors' code can."""
    config = tiny_config(model={**TINY["model"], "channels": 1}, data={"dataset": str(image_folder), "resolution": 16,
                                                                       "range": [0, 1]})
    trainer = Trainer(config, str(tmp_path / "run"))
    torch.manual_seed(0)
    reals = trainer._real_batch(6)
    torch.manual_seed(0)
    grey = to_tensor(trainer.data.images[torch.randint(len(trainer.data.images), (6,)).numpy()], 1)  # in [-1, 1]
    assert reals.shape == (6, 1, 16, 16) and torch.allclose(reals, (grey + 1) / 2)
    assert trainer.D.channels == 1
    summary = trainer.train()
    assert summary["best"]["fid"] > 0 and summary["best"]["recall"] is not None
    grid = np.asarray(Image.open(tmp_path / "run" / "samples" / "grid-00000008.png"))
    assert (grid[..., 0] == grid[..., 1]).all()  # grey


def test_bad_ranges_and_channels_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.range: must be \[-1, 1\] or \[0, 1\], got \[0\.0, 255\.0\]"):
        tiny_config(data={"dataset": "digits", "resolution": 16, "range": [0, 255]})
    with pytest.raises(ConfigError, match=r"model\.channels: 1 \(grey\) or 3 \(RGB\), got 2"):
        tiny_config(model={**TINY["model"], "channels": 2})
