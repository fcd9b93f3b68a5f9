"""Simulated sweeps: everything real but the training. The curves (no Ray), then whole sweeps through the real
driver, Ray Tune, Optuna and MLflow, labelled simulated everywhere and never promoted."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from conftest import child_runs, run_main, sweep_file, tracking_db

from sweeps.simulation import CurveModel, Replay, evaluation_steps, parameter_distance
from sweeps.sweep_file import load_sweep


def test_the_trainers_evaluation_steps_and_the_model_curves_are_deterministic_per_config(tmp_path, image_folder):
    spec = load_sweep(sweep_file(tmp_path, image_folder, {"model.d_hidden": [8, 16, 32]}, steps=7))
    config = spec.trial_config({"model.d_hidden": 8})
    assert evaluation_steps(config) == [3, 6, 7]  # every fid.every, and the last step
    model = CurveModel.packaged(seed=0)
    a, b = (model.simulation({"model.d_hidden": h}, config, 0.01) for h in (8, 8))
    assert a == b and a.source == "model" and [e["step"] for e in a.evaluations] == [3, 6, 7]
    other_seed = CurveModel.packaged(seed=1).simulation({"model.d_hidden": 8}, config, 0.01)
    assert other_seed.evaluations != a.evaluations
    assert all(e["fid"] > 0 and e["kid"] > 0 and 0 <= e["precision"] <= 1 and e["kid_std"] > 0
               for e in a.evaluations)
    # Across configs, the floors spread and the curves fall: what a pruner has to tell apart.
    spread = [CurveModel.packaged(seed=0).simulation({"model.d_hidden": h, "i": i}, config, 0.01).evaluations
              for i in range(40) for h in (8,)]
    finals, firsts = [c[-1]["kid"] for c in spread], [c[0]["kid"] for c in spread]
    assert max(finals) > 2 * min(finals) and sum(f < s for f, s in zip(finals, firsts)) >= 38


def test_a_replay_follows_the_nearest_recorded_trial_by_the_fraction_of_training(tmp_path, image_folder):
    recorded = {"name": "old", "settings": {}, "best": {"config": {"steps": 100}}, "trials": [
        {"trial_id": "trial_0000", "params": {"model.d_hidden": 8, "optim.lr": 1e-3}, "steps": 100,
         "evaluations": [{"step": 50, "fid": 40.0, "kid": 0.04}, {"step": 100, "fid": 20.0, "kid": 0.02}]},
        {"trial_id": "trial_0001", "params": {"model.d_hidden": 32, "optim.lr": 1e-3}, "steps": 50,
         "evaluations": [{"step": 50, "fid": 90.0, "kid": 0.09}]}]}
    replay = Replay.from_summary(recorded)
    spec = load_sweep(sweep_file(tmp_path, image_folder, {"model.d_hidden": [8, 16, 32]}, steps=6, **{"fid.every": 3}))
    near_8 = replay.simulation({"model.d_hidden": 12, "optim.lr": 1e-3}, spec.trial_config({}), 0.0)
    assert near_8.replays == "trial_0000"  # log(12 / 8) < log(32 / 12)
    assert [(e["step"], e["fid"], e["kid"]) for e in near_8.evaluations] == [(3, 40.0, 0.04), (6, 20.0, 0.02)]
    pruned = replay.simulation({"model.d_hidden": 32, "optim.lr": 1e-3}, spec.trial_config({}), 0.0)
    assert pruned.replays == "trial_0001" and [e["fid"] for e in pruned.evaluations] == [90.0, 90.0]  # held
    assert parameter_distance({"a": "v1"}, {"a": "v2", "b": 1}) == 2.0


def _simulated(tmp_path, image_folder, *args):
    from sweeps.cli.launch import main as launch_main

    sweep = sweep_file(tmp_path, image_folder, {"model.d_hidden": [8, 16, 32, 64], "optim.lr": [1e-3, 2e-3]},
                       steps=6, **{"fid.every": 2})
    common = ["--storage", str(tmp_path / "out"), "--tracking-uri", tracking_db(tmp_path)]
    return run_main(launch_main, "--dataset", sweep, "--step-seconds", "0.01", *common, *args), common


def test_a_simulated_sweep_runs_through_the_real_service_labelled_and_is_never_promoted(tmp_path, image_folder,
                                                                                          local_ray):
    from sweeps.cli.continue_best import main as continue_main
    from sweeps.cli.promote import main as promote_main
    from sweeps.overview import collect

    result, common = _simulated(tmp_path, image_folder, "--simulate", "model", "--name", "sim", "--num-trials", "12",
                                "--max-concurrent", "8", "--pruner", "median", "--warmup", "1")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "SIMULATED (--simulate model)" in result.stdout
    folder = tmp_path / "out" / "sim"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["simulated"] == {"source": "model", "step_seconds": 0.01}
    assert summary["best"]["checkpoint"] is None  # a replayed curve leaves no generator behind
    assert len(summary["trials"]) == 12 and {t["state"] for t in summary["trials"]} <= {"COMPLETE", "PRUNED"}
    assert "PRUNED" in {t["state"] for t in summary["trials"]}  # the real pruner decided on the replayed curves
    assert not (folder / "trials").exists() or not list((folder / "trials").rglob("*.pt"))  # nothing trained
    # Tune keeps every pointer checkpoint: with num_to_keep, each trial's third report would force a snapshot of
    # the whole experiment's state, a cost that grows with the sweep (BENCHMARKS.md, the control plane at scale)
    for trial in summary["trials"]:
        assert len(list((folder / trial["trial_id"]).glob("checkpoint_*"))) == len(trial["evaluations"])
    client, parent, runs = child_runs(summary["tracking_uri"], summary)
    assert parent.data.tags["fpa.simulated"] == "model" and len(runs) == 12
    assert {r.data.tags["fpa.simulated"] for r in runs} == {"model"}
    assert all("kid" in r.data.metrics for r in runs)
    study = optuna.load_study(study_name="sim", storage=f"sqlite:///{folder / 'optuna.db'}")
    assert len(study.trials) == 12
    (row,) = collect(str(tmp_path / "out"))
    assert row["state"] == "finished" and row["simulated"] == "model" and row["trials_done"] == 12

    promoted = run_main(promote_main, "--sweep", "sim", *common)
    assert promoted.returncode == 2 and "was simulated" in promoted.stderr
    continued = run_main(continue_main, "--sweep", "sim", "--steps", "9", *common)
    assert continued.returncode == 2 and "was simulated" in continued.stderr

    # A finished sweep replayed: each sampled config follows its nearest recorded trial.
    replayed, _ = _simulated(tmp_path, image_folder, "--simulate", "sim", "--name", "replay", "--num-trials", "4",
                             "--pruner", "none", "--metric", "kid")
    assert replayed.returncode == 0, replayed.stderr[-3000:]
    again = json.loads((tmp_path / "out" / "replay" / "summary.json").read_text())
    assert again["simulated"]["source"] == "sim" and {t["state"] for t in again["trials"]} == {"COMPLETE"}
    _, parent, (child, *_) = child_runs(again["tracking_uri"], again)
    assert child.data.tags["fpa.replays"].startswith("trial_")
    # A KID sweep names the trials within noise of its best: in its summary, its report and its MLflow parent.
    tied = again["tied"]
    assert tied["noise"] == "KID std over subsets" and tied["trials"][0] == again["best"]["trial_id"]
    assert parent.data.tags["fpa.tied_trials"] == ",".join(tied["trials"])
    assert "within noise of it (KID std over subsets, 2 std of the difference): " in replayed.stdout


def test_simulate_needs_a_source_and_no_dataset(tmp_path):
    from sweeps.cli.launch import main as launch_main

    nope = run_main(launch_main, "--dataset", "metfaces", "--simulate", "nope", "--storage", str(tmp_path / "o"))
    assert nope.returncode == 2 and "--simulate nope: neither model nor a finished sweep" in nope.stderr
    assert "dataset 'metfaces' not found" not in nope.stderr  # the curves are a simulated sweep's data
    alone = run_main(launch_main, "--dataset", "digits", "--step-seconds", "1")
    assert alone.returncode == 2 and "--step-seconds 1.0: goes with --simulate SOURCE" in alone.stderr
    assert not Path(tmp_path / "o").exists()


@pytest.fixture(autouse=True)
def _quiet_optuna():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
