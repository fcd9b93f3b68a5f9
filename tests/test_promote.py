"""After a sweep: promote its best generator to champion, load it by name, refine it with a U-Net stage."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import run_main, settings, sweep_file, tracking_db
from mlflow.tracking import MlflowClient

from fpa_core import checkpoint
from fpa_core.checkpoint import load_generator
from fpa_core.model import FPAGenerator
from fpa_core.unet import RefinedGenerator

pytest.importorskip("ray")

from sweeps.driver import SweepSettings, run_sweep  # noqa: E402
from sweeps.cli.launch import main as launch_main  # noqa: E402
from sweeps.cli.promote import main as promote_main  # noqa: E402
from sweeps.registry import model_name, promote  # noqa: E402
from sweeps.sweep_file import load_sweep  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def run_promote(*args):
    return run_main(promote_main, *args)  # in this process: MLflow is imported once


def test_promote_a_champion_load_it_by_name_and_refine_it(tmp_path, image_folder, local_ray):
    sweep = sweep_file(tmp_path, image_folder, {"model.d_hidden": [8, 16]})  # its real features take a second
    s = settings(tmp_path, num_trials=2)
    summary = run_sweep(load_sweep(sweep), s)
    flags = ["--storage", s.storage, "--tracking-uri", s.tracking_uri]
    name = model_name(summary["dataset"])
    assert name == f"fpa-{image_folder.name}"  # a dataset given as a folder is named after it
    client = MlflowClient(s.tracking_uri)

    first = run_promote("--sweep", s.name, *flags)
    assert first.returncode == 0, first.stderr[-2000:]
    assert json.loads(first.stdout.splitlines()[-1]) == {
        "model": name, "version": 1, "champion": True, "previous_champion": None, "reason": "the first champion"}
    champion = client.get_model_version_by_alias(name, "champion")
    assert champion.run_id == summary["best"]["run_id"]
    assert float(champion.tags["fpa.fid"]) == summary["best"]["fid"] and champion.tags["fpa.sweep"] == s.name
    assert champion.tags["fpa.checkpoint"] == summary["best"]["checkpoint"]
    registered_config = json.loads(champion.tags["fpa.config"])
    assert registered_config["model"]["d_hidden"] == summary["best"]["config"]["model"]["d_hidden"]

    again = run_promote("--sweep", s.name, *flags)
    assert again.returncode == 0 and "nothing to promote" in again.stdout and "already holds" in again.stdout

    worse = max(summary["trials"], key=lambda t: t["best"]["fid"])
    second = run_promote("--run", worse["run_id"], *flags)
    assert second.returncode == 0 and "champion unchanged" in second.stdout
    assert client.get_model_version_by_alias(name, "champion").version == 1

    # An FID measured another way (here 192-d features) is never compared, however low.
    state = checkpoint.load(summary["best"]["checkpoint"])
    state["config"]["fid"]["dims"] = 192
    state["evaluations"] = [{"step": state["step"], "fid": 0.01, "kid": 0.0}]
    other = str(tmp_path / "other-fid.pt")
    checkpoint.save(other, {k: v for k, v in state.items() if k != "format_version"})
    result = promote(other, worse["run_id"], s.tracking_uri)
    assert not result.champion and "dims 64 vs 192" in result.reason

    # The champion by name, from Python and from the command line.
    generator = load_generator(f"models:/{name}@champion", tracking_uri=s.tracking_uri)
    assert isinstance(generator, FPAGenerator)
    painted = subprocess.run([sys.executable, "-m", "fpa_core.paint", "--model", f"models:/{name}@champion",
                              "--tracking-uri", s.tracking_uri, "--out", str(tmp_path / "pictures"), "--samples", "4"],
                             capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert painted.returncode == 0, painted.stderr[-2000:]
    assert {p.name for p in (tmp_path / "pictures").iterdir()} == {"grid.png", "painting.png", "painting.gif"}

    # A U-Net stage on the champion: its FIDs beside the base's, and it is promotable.
    unet_sweep = load_sweep(sweep_file(tmp_path, image_folder, {"unet.dim": [4, 8]}, **{
        "unet.dim_mults": [1, 2, 2], "unet.groups": 4, "unet.blocks": 1}))
    u = SweepSettings(**{**settings(tmp_path, num_trials=1).__dict__, "stage": "unet", "base": "champion"})
    refined = run_sweep(unet_sweep, u)
    assert refined["stage"] == "unet" and refined["base"]["source"] == f"models:/{name}@champion"
    assert refined["base"]["fid"] == summary["best"]["fid"] and refined["best"]["fid"] is not None
    assert refined["best"]["config"]["model"]["d_hidden"] == summary["best"]["config"]["model"]["d_hidden"]
    parent = client.get_run(refined["parent_run_id"])
    assert parent.data.metrics["base_fid"] == summary["best"]["fid"]
    forced = run_promote("--sweep", u.name, "--force", *flags)
    assert forced.returncode == 0, forced.stderr[-2000:]
    record = json.loads(forced.stdout.splitlines()[-1])
    assert record["champion"] and record["previous_champion"] == 1
    assert client.get_model_version_by_alias(name, "previous-champion").version == 1
    champion = load_generator(f"models:/{name}@champion", tracking_uri=s.tracking_uri)
    assert isinstance(champion, RefinedGenerator)
    with torch.no_grad():
        assert champion(torch.randn(2, champion.config.d_latent)).shape == (2, 1, 16, 16)  # the digits recipe paints one channel

    # --force takes an already registered version back to champion.
    back = run_promote("--run", worse["run_id"], "--force", *flags)
    assert json.loads(back.stdout.splitlines()[-1])["previous_champion"] == record["version"]
    assert client.get_model_version_by_alias(name, "champion").version == 2

    # Better, but by less than the noise of the comparison: the champion stays, unless --force.
    champion = client.get_model_version_by_alias(name, "champion")
    held, std = float(champion.tags["fpa.value"]), float(champion.tags["fpa.noise_std"])
    assert std > 0 and champion.tags["fpa.noise"] == "std over 3 fresh latent seeds"

    def candidate(fid: float, file: str) -> str:  # the champion's generator, its own FID recorded as ``fid``
        state = checkpoint.load(champion.tags["fpa.checkpoint"])
        state["evaluations"] = [{**e, "fid": fid} if e["step"] == state["step"] else e for e in state["evaluations"]]
        checkpoint.save(str(tmp_path / file), {k: v for k, v in state.items() if k != "format_version"})
        return str(tmp_path / file)

    close = candidate(held - 0.5 * std, "within-noise.pt")  # the margin: 2 * sqrt(2) std, its own std the same
    within = promote(close, worse["run_id"], s.tracking_uri)
    assert within.version is not None and not within.champion, within.reason
    assert "does not beat" in within.reason and "within the noise margin" in within.reason and "--force" in within.reason
    tags = client.get_model_version(name, within.version).tags
    assert float(tags["fpa.margin"]) == pytest.approx(2 * math.hypot(std, float(tags["fpa.noise_std"])))
    assert tags["fpa.test"].startswith(f"against version {champion.version}: FID lower by")
    assert client.get_model_version_by_alias(name, "champion").version == champion.version
    assert promote(close, worse["run_id"], s.tracking_uri, force=True).champion
    far = promote(candidate(held - 0.5 * std - 4 * std, "beyond-noise.pt"), worse["run_id"], s.tracking_uri)
    assert far.champion and "beats" in far.reason and "beyond the noise margin" in far.reason, far.reason

    # --noise-seeds 0 is KID's own std: an FID sweep has none, and is told what to do.
    no_std = run_promote("--run", worse["run_id"], "--noise-seeds", "0", *flags)
    assert no_std.returncode == 2 and "FID has no standard deviation of its own" in no_std.stderr
    assert run_promote("--run", worse["run_id"], "--noise-seeds", "1", *flags).returncode == 2


@pytest.mark.inception
def test_promote_with_evaluate_scores_the_candidate_first_and_compares_like_with_like(tmp_path, image_folder):
    from fpa_core.train.config import load_config
    from fpa_core.train.trainer import Trainer

    tiny = {"model": {"d_latent": 8, "d_in": 2, "d_in_proj": 8, "d_hidden": 16, "num_layers": 1, "height": 16,
                      "width": 16, "steps": 4},
            "discriminator": {"fmap_max": 16, "attn_res_layers": [], "small_head_attention": False},
            "data": {"dataset": str(image_folder), "resolution": 16}, "optim": {"batch_size": 4},
            "fid": {"every": 2, "num_images": 8, "dims": 64}, "checkpoint": {"every": 2, "keep": 2},
            "pictures": {"samples": 4, "paintings": 1}, "steps": 4, "device": "cpu"}
    out = tmp_path / "run"
    Trainer(load_config("digits", tiny), str(out)).train()
    tracking_uri = tracking_db(tmp_path)
    client = MlflowClient(tracking_uri)
    run_id = client.create_run(client.create_experiment("fpa-images")).info.run_id
    best, latest = str(out / "checkpoints" / "best.pt"), str(out / "checkpoints" / "latest-00000002.pt")

    first = promote(best, run_id, tracking_uri, noise_seeds=2)  # its run's own 64-d scores of 8 images
    assert first.champion and json.loads(first.tags["fpa.protocol"])["num_images"] == 8
    evaluated = promote(best, run_id, tracking_uri, evaluate=12, noise_seeds=2)  # the paper's protocol, at 12 images
    protocol = json.loads(evaluated.tags["fpa.protocol"])
    assert (protocol["dims"], protocol["num_images"], protocol["precision"], protocol["metric"]) == (2048, 12, "fp32",
                                                                                                      "fid")
    assert not evaluated.champion and "was not measured like" in evaluated.reason and "num_images 8 vs 12" in evaluated.reason
    forced = promote(best, run_id, tracking_uri, evaluate=12, force=True)  # already registered: made champion
    assert forced.champion and forced.version == evaluated.version
    other = promote(latest, run_id, tracking_uri, evaluate=12, noise_seeds=2)  # now compared, on the same protocol
    assert ("beats" in other.reason) == other.champion and "not measured" not in other.reason
    assert float(other.tags["fpa.value"]) == float(other.tags["fpa.fid"]) > 0
    assert float(other.tags["fpa.noise_std"]) > 0 and other.tags["fpa.noise"] == "std over 2 fresh latent seeds"


@pytest.mark.process
def test_promote_and_resume_reject_bad_input(tmp_path):
    flags = ["--storage", str(tmp_path), "--tracking-uri", tracking_db(tmp_path, "m.db")]
    missing = run_promote("--sweep", "nope", *flags)
    assert missing.returncode == 2 and "nope" in missing.stderr
    assert run_promote("--sweep", "nope", "--evaluate", "1", *flags).returncode == 2
    assert run_promote(*flags).returncode == 2  # --sweep or --run is required
    assert run_main(launch_main, "--dataset", "digits", "--base", "champion").returncode == 2  # needs --stage unet
    bad_model = subprocess.run([sys.executable, "-m", "fpa_core.paint", "--model", "models:/fpa-nope@champion",
                                "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}", "--out", str(tmp_path / "p")],
                               capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert bad_model.returncode == 2 and "fpa-promote" in bad_model.stderr
