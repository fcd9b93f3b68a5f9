"""python -m fpa_core.evaluate: a checkpoint scored again, as its run did or as the paper's tables did."""

import json
import subprocess
import sys

import pytest
from conftest import run_main

from fpa_core import checkpoint
from fpa_core.metrics.protocol import DatasetMismatch, evaluate_checkpoint
from fpa_core.evaluate import main as evaluate_main
from fpa_core.train.config import load_config
from fpa_core.train.trainer import Trainer

TINY = {
    "model": {"d_latent": 8, "d_in": 2, "d_in_proj": 8, "d_hidden": 16, "num_layers": 1, "height": 16, "width": 16,
              "steps": 4},
    "discriminator": {"fmap_max": 16, "attn_res_layers": [], "small_head_attention": False},
    "data": {"dataset": "digits", "resolution": 16},
    "optim": {"batch_size": 4},
    "fid": {"every": 2, "num_images": 20, "dims": 64, "batch_size": 8},
    "checkpoint": {"every": 2},
    "pictures": {"samples": 4, "paintings": 1},
    "steps": 4, "log_every": 2, "device": "cpu",
}


@pytest.fixture(scope="module")
def run(tmp_path_factory, image_folder):
    out = tmp_path_factory.mktemp("eval") / "run"
    config = load_config("digits", {**TINY, "data": {"dataset": str(image_folder), "resolution": 16}})
    return out, Trainer(config, str(out)).train()


def evaluate(*args):
    return subprocess.run([sys.executable, "-m", "fpa_core.evaluate", *args], capture_output=True, text=True,
                          timeout=300)


@pytest.mark.process
def test_as_trained_it_reproduces_the_runs_best_scores(run):
    out, summary = run
    best = out / "checkpoints" / "best.pt"
    result = evaluate("--checkpoint", str(best), "--as-trained")
    assert result.returncode == 0, result.stderr
    record = json.loads((out / "checkpoints" / "best.eval.json").read_text())
    assert record["step"] == summary["best"]["step"]
    assert record["scores"] == pytest.approx({k: summary["best"][k] for k in record["scores"]}, rel=1e-9)
    protocol = record["protocol"]
    assert protocol["precision"] == "fp32" and protocol["calibrated"] is True and protocol["num_images"] == 20
    assert protocol["weights_sha256"] == summary["fid_weights"] and protocol["num_real"] == 48
    assert json.loads(result.stdout.strip().splitlines()[-1])["fid"] == pytest.approx(summary["best"]["fid"], rel=1e-9)


@pytest.mark.process
def test_other_settings_are_written_where_asked(run, tmp_path):
    out, _ = run
    result = evaluate("--checkpoint", str(out / "checkpoints" / "best.pt"), "--num-images", "12", "--dims", "64",
                      "--format", "png", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    protocol = json.loads((tmp_path / "eval.json").read_text())["protocol"]
    assert (protocol["num_images"], protocol["image_format"], protocol["dims"]) == (12, "png", 64)
    assert "images/s" in result.stdout


@pytest.mark.parametrize("args, message", [
    (["--num-images", "1"], "--num-images must be at least 2"),
    (["--dataset", "nowhere-dataset"], "unknown dataset"),
    (["--dims", "100"], "invalid choice"),
])
def test_bad_input_exits_2_with_one_message(run, args, message):
    out, _ = run
    result = run_main(evaluate_main, "--checkpoint", str(out / "checkpoints" / "best.pt"), *args)  # in this process
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_a_missing_checkpoint_exits_2(tmp_path):
    result = run_main(evaluate_main, "--checkpoint", str(tmp_path / "missing.pt"))
    assert result.returncode == 2 and "no checkpoint at" in result.stderr


def test_a_dataset_that_differs_from_the_checkpoints_is_refused(run):
    out, _ = run
    state = checkpoint.load(str(out / "checkpoints" / "best.pt"))
    with pytest.raises(DatasetMismatch, match="is not the dataset"):
        evaluate_checkpoint(state, num_images=4, dims=64, dataset="digits")
