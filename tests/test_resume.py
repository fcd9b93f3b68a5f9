"""After a sweep's driver dies: `launch.py --resume NAME` finishes it, every trial once, in its own runs."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from conftest import child_runs, run_main, settings, sweep_file, tracking_db
from mlflow.tracking import MlflowClient

psutil = pytest.importorskip("psutil")

from sweeps.cli.continue_best import main as continue_best_main  # noqa: E402
from sweeps.cli.launch import main as launch_main  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


class _Payload:
    """A pickle that, once loaded, leaves a file behind: what an attacker would plant in the storage."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _trial_folders(root: Path) -> list[Path]:
    return sorted((root / "trials").glob("trial_*"))


def _logged_steps(folder: Path) -> list[int]:
    path = folder / "metrics.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.is_file() else []


def test_a_sweep_whose_driver_was_killed_resumes_every_trial_once(tmp_path, image_folder, local_ray):
    sweep = sweep_file(tmp_path, image_folder, {"model.d_hidden": [8, 16]}, steps=12, log_every=1)
    storage, tracking = tmp_path / "out", tracking_db(tmp_path)
    common = ["--storage", str(storage), "--tracking-uri", tracking]
    root = storage / "killed"
    driver = subprocess.Popen([sys.executable, "sweeps/launch.py", "--dataset", sweep, "--name", "killed",
                               "--num-trials", "4", "--max-concurrent", "2", "--pruner", "none", *common],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:  # kill it once one trial has finished and another is part-way through
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and driver.poll() is None:
            folders = _trial_folders(root)
            done = [f for f in folders if (f / "summary.json").is_file()]
            midway = [f for f in folders if f not in done and max(_logged_steps(f), default=0) >= 4]
            if done and midway:
                break
            time.sleep(0.2)
        assert driver.poll() is None, "the sweep ended before it could be killed"
        ray_processes = psutil.Process(driver.pid).children(recursive=True)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
    # What the driver started (its local Ray, the trials) goes with it, as on a lost head node.
    _, alive = psutil.wait_procs(ray_processes, timeout=30)
    for process in alive:
        process.kill()
    before = {f.name: max(_logged_steps(f), default=0) for f in _trial_folders(root)}
    assert not (root / "summary.json").exists()

    missing = run_main(launch_main, "--resume", "nope", *common)  # bad input, in this process
    assert missing.returncode == 2
    assert "killed" in missing.stderr and "nope" in missing.stderr  # names the sweeps that exist
    assert run_main(launch_main, "--resume", "killed", "--num-trials", "9", *common).returncode == 2

    result = run_main(launch_main, "--resume", "killed", *common)  # the same command, on the tests' local Ray
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    summary = json.loads((root / "summary.json").read_text())
    names = [t["trial_id"] for t in summary["trials"]]
    assert len(names) == 4 and len(set(names)) == 4, names  # every trial exactly once
    assert {t["state"] for t in summary["trials"]} == {"COMPLETE"}
    assert all(t["steps"] == 12 for t in summary["trials"])
    for name, steps_then in before.items():  # a trial redid at most one FID interval (3 steps)
        records = [json.loads(line) for line in (root / "trials" / name / "metrics.jsonl").read_text().splitlines()]
        resumed = [r for r in records if r.get("event") == "resumed"]
        assert all(r["lost_steps"] <= 3 for r in resumed), resumed
        if 0 < steps_then < 12:
            assert resumed and resumed[0]["step"] >= steps_then - 3, (name, steps_then, resumed)

    client, parent, runs = child_runs(tracking, summary)
    assert parent.info.status == "FINISHED"
    assert sorted(r.data.tags["fpa.trial_id"] for r in runs) == sorted(names)  # no duplicate child runs
    assert {r.info.run_id for r in runs} == {t["run_id"] for t in summary["trials"]}
    assert all(r.info.status == "FINISHED" for r in runs)
    trials = optuna.load_study(study_name="killed", storage=f"sqlite:///{root / 'optuna.db'}").trials
    assert [t.state.name for t in trials].count("COMPLETE") == 4
    # A trial the driver had asked Optuna for when it was killed, before handing it out, never ran: it is
    # closed as FAIL (test_a_new_bridge_takes_up_trials_the_dead_driver_left), and no other trial ends so.
    assert all(t.state.name == "FAIL" and not t.intermediate_values for t in trials if t.state.name != "COMPLETE")


def test_a_trial_that_had_finished_when_its_driver_died_ends_on_resume(tmp_path, image_folder, local_ray, recwarn):
    """The driver died after a trial's last evaluation and its end in MLflow, before the study's: the study
    still holds it RUNNING, with every evaluation. On --resume it has nothing left to train and ends COMPLETE
    with the same scores (Tune still gets a last result with the metric, which it requires of every trial)."""
    import sqlite3

    from sweeps.driver import resume_sweep, run_sweep
    from sweeps.sweep_file import load_sweep

    s = settings(tmp_path, num_trials=1)
    before = run_sweep(load_sweep(sweep_file(tmp_path, image_folder, {"model.d_hidden": [8]}, steps=3)), s)
    root = Path(s.storage, s.name)
    with sqlite3.connect(root / "optuna.db") as db:  # the study as the dead driver left it
        db.execute("UPDATE trials SET state = 'RUNNING', datetime_complete = NULL")
        db.execute("DELETE FROM trial_values")
    (root / "summary.json").unlink()

    after = resume_sweep(s.name, s.storage, tracking_uri=s.tracking_uri)
    assert [(t["trial_id"], t["state"], t["steps"], t["best"]) for t in after["trials"]] == [
        (t["trial_id"], "COMPLETE", 3, t["best"]) for t in before["trials"]]
    (trial,) = optuna.load_study(study_name=s.name, storage=f"sqlite:///{root / 'optuna.db'}").trials
    assert trial.state.name == "COMPLETE" and trial.value == pytest.approx(before["best"]["fid"])
    assert list(trial.intermediate_values) == [3]  # the study's evaluations stay as they were
    assert not [w for w in recwarn if "already reported" in str(w.message)]


def test_the_best_trials_continue_to_a_larger_budget_in_linked_runs(tmp_path, image_folder, local_ray):
    sweep = sweep_file(tmp_path, image_folder, {"model.d_hidden": [8, 16]})
    storage, tracking = tmp_path / "out", tracking_db(tmp_path)
    common = ["--storage", str(storage), "--tracking-uri", tracking]
    first = run_main(launch_main, "--dataset", sweep, "--name", "short", "--num-trials", "2", "--pruner", "none",
                     *common)  # the commands run in this process, on the tests' local Ray
    assert first.returncode == 0, first.stderr[-3000:]
    original = json.loads((storage / "short" / "summary.json").read_text())

    def resume(*args):
        return run_main(continue_best_main, *args, *common)

    assert resume("--sweep", "nope", "--steps", "9").returncode == 2
    assert resume("--sweep", "short", "--top-k", "0", "--steps", "9").returncode == 2
    assert "does not go beyond" in resume("--sweep", "short", "--steps", "6").stderr
    assert "already exists" in resume("--sweep", "short", "--steps", "9", "--name", "short").stderr
    result = resume("--sweep", "short", "--top-k", "1", "--steps", "9", "--name", "longer")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    summary = json.loads((storage / "longer" / "summary.json").read_text())
    assert set(summary) >= {"name", "dataset", "parent_run_id", "fid_calibrated", "best", "trials"}
    ranked = sorted(original["trials"], key=lambda t: t["best"]["fid"])[:1]
    by_name = {t["trial_id"]: t for t in summary["trials"]}
    assert set(by_name) == {ranked[0]["trial_id"]}  # the best, by best FID
    client = MlflowClient(tracking)
    for trial in ranked:
        continued = by_name[trial["trial_id"]]
        assert continued["state"] == "COMPLETE" and continued["steps"] == 9
        assert [e["step"] for e in continued["evaluations"]][-1] == 9 and continued["run_id"] != trial["run_id"]
        run = client.get_run(continued["run_id"])
        assert run.data.tags["fpa.continues_run"] == trial["run_id"]
        assert run.data.params["fpa.continues_run"] == trial["run_id"]
        assert run.data.params["steps"] == "9"
        records = [json.loads(line) for line in
                   (storage / "longer" / "trials" / trial["trial_id"] / "metrics.jsonl").read_text().splitlines()]
        assert records[0]["event"] == "resumed" and records[0]["from"].endswith("best.pt")


def test_a_new_bridge_takes_up_trials_the_dead_driver_left(tmp_path, image_folder):
    """A resumed sweep's bridge is rebuilt from the study alone: finished trials stay finished with all their
    scores, and each trial the dead driver left running (one it asked for a moment before dying among them)
    goes to the next Ray trial, in the same folder and MLflow run, told which evaluations the study has."""
    from sweeps.study import OptunaBridge
    from sweeps.sweep_file import load_sweep
    from sweeps.tracking import SweepTracker

    spec = load_sweep(sweep_file(tmp_path, image_folder, {"model.d_hidden": [8, 16, 32]}))
    tracker = SweepTracker(tracking_db(tmp_path), spec.dataset)
    parent = tracker.start_parent("s", {}, {})
    storage_url = f"sqlite:///{tmp_path / 'optuna.db'}"

    def bridge():
        store = optuna.storages.RDBStorage(storage_url)
        return OptunaBridge(spec, optuna.load_study(study_name="s", storage=store), store, tracker, parent,
                            settings(tmp_path, name="s", optuna_storage=storage_url), {"cpu": 1}, spec.trial_config({}))

    optuna.create_study(study_name="s", storage=storage_url)
    dead = bridge()
    first = dead.new_trial("ray-a")
    running = dead.new_trial("ray-b")
    assert dead.report("ray-a", {"step": 6, "fid": 10.0, "kid": 0.1}) is False
    dead.complete("ray-a", {"step": 6}, error=False)
    assert dead.report("ray-b", {"step": 3, "fid": 11.0, "kid": 0.2, "node_id": "n1"}) is False
    lost = dead.new_trial("ray-c")  # asked for, then the driver died
    unnamed = dead.study.ask()  # the driver died right after asking: nothing kept, so nothing to continue
    half = dead.study.ask()  # ... or after keeping the parameters, before creating the MLflow run
    half.set_user_attr("fpa.trial", f"trial_{half.number:04d}")
    half.set_user_attr("fpa.params", {"model.d_hidden": 32})

    alive = bridge()
    alive.reconcile()
    done = alive.records[first.trial_id]
    assert done.state == "COMPLETE" and done.evaluations == [{"step": 6, "fid": 10.0, "kid": 0.1}]
    assert alive.best == (10.0, first.trial_id) and alive.reports == 2
    assert alive.to_run(6) == 5  # the one that ended is not run again
    taken = alive.new_trial("ray-d")  # the first Ray trials take up the unfinished ones, oldest first
    assert (taken.trial_id, taken.run_id, taken.reported_step) == (running.trial_id, running.run_id, 3)
    assert alive.records[running.trial_id].best == {"step": 3, "fid": 11.0, "kid": 0.2}
    assert alive.records[running.trial_id].placement == {"node_id": "n1"}
    taken_lost = alive.new_trial("ray-e")
    assert (taken_lost.trial_id, taken_lost.run_id, taken_lost.reported_step) == (
        lost.trial_id, lost.run_id, 0)
    taken_half = alive.new_trial("ray-f")
    assert taken_half.trial_id == f"trial_{half.number:04d}" and taken_half.config.model.d_hidden == 32
    fresh = alive.new_trial("ray-g")
    assert fresh.trial_id not in {first.trial_id, running.trial_id, lost.trial_id, taken_half.trial_id}
    assert alive.report("ray-e", {"step": 3, "fid": 12.5}) is False  # its Optuna handle, rebuilt from the store
    alive.complete("ray-e", {"step": 6, "fid": 12.0}, error=False)
    alive.close_out()  # ray-d, ray-f and ray-g never reported again: failed, never COMPLETE
    states = {t.number: t.state.name for t in optuna.load_study(study_name="s", storage=storage_url).trials}
    assert states == {0: "COMPLETE", 1: "FAIL", 2: "COMPLETE", unnamed.number: "FAIL", half.number: "FAIL",
                      5: "FAIL"}
    assert optuna.load_study(study_name="s", storage=storage_url).trials[2].intermediate_values == {3: 12.5}
    children = tracker.client.search_runs([tracker.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'")
    assert sorted(r.data.tags["fpa.trial_id"] for r in children) == sorted(alive.records)  # one run each
    assert len(children) == 5 and {r.info.status for r in children} == {"FINISHED", "FAILED"}


def _trained_since_resumed(folder: Path) -> bool:
    """Whether a trial has logged a training step since its run folder was last resumed."""
    path = folder / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    resumed = [i for i, r in enumerate(records) if r.get("event") == "resumed"]
    return bool(resumed) and any("d_loss" in r for r in records[resumed[-1] + 1:])


def _interrupt_group(command: list[str], root: Path, signum: int, ready) -> str:
    """Run a sweep command as a job of its own process group, send ``signum`` to the whole group once ``ready(a
    trial's folder)`` holds, and return its stderr once it has ended (asserting that it ended as on Ctrl-C)."""
    driver = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)  # its own group, as a job's: the signal spares pytest
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and driver.poll() is None:
            if any(ready(f) for f in _trial_folders(root)):
                break
            time.sleep(0.2)
        signalled = time.monotonic()
        os.killpg(driver.pid, signum)  # every process of the group, as a scheduler or a terminal sends it
        _, stderr = driver.communicate(timeout=120)
        stopped_in = time.monotonic() - signalled
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 130, stderr[-3000:]
    assert "--resume interrupted" in stderr and not (root / "summary.json").exists()
    assert "Tuner.restore" not in stderr and "Failed to connect to GCS" not in stderr
    assert stopped_in < 60, stopped_in  # not the minute a driver waits for a GCS that died
    return stderr


def test_a_signal_to_the_whole_process_group_stops_a_sweep_and_it_resumes(tmp_path, image_folder, local_ray):
    """SIGINT to the job's whole process group (a terminal's Ctrl-C), and SIGTERM to it (Slurm's scancel,
    systemd's stop, `timeout`, docker stop), end the sweep as Ctrl-C to the driver does: the local Ray's
    processes are out of the group and live on until the driver has stopped the trials; it exits 130 with the
    --resume hint (and not Ray Tune's Tuner.restore one), and --resume finishes every trial."""
    sweep = sweep_file(tmp_path, image_folder, {"model.d_hidden": [8, 16]}, steps=9)
    storage, tracking = tmp_path / "out", tracking_db(tmp_path)
    common = ["--storage", str(storage), "--tracking-uri", tracking]
    root = storage / "interrupted"
    launch = [sys.executable, "sweeps/launch.py"]
    _interrupt_group([*launch, "--dataset", sweep, "--name", "interrupted", "--num-trials", "2", "--pruner", "none",
                      *common], root, signal.SIGINT, lambda f: max(_logged_steps(f), default=0) >= 4)
    _interrupt_group([*launch, "--resume", "interrupted", *common], root, signal.SIGTERM, _trained_since_resumed)
    study = optuna.load_study(study_name="interrupted", storage=f"sqlite:///{root / 'optuna.db'}")
    assert {t.state.name for t in study.trials} <= {"RUNNING", "COMPLETE"}  # nothing failed by the interrupts

    # Whoever can write the storage cannot run code through it: Ray's pickles there are never read ...
    planted = sorted(root.rglob("*.pkl"))
    assert root / "tuner.pkl" in planted
    for path in planted:
        path.write_bytes(pickle.dumps(_Payload(tmp_path / "payload-ran")))
    # ... and a changed sweep.json is refused, before any work.
    record = root / "sweep.json"
    original = record.read_text()
    changed = json.loads(original)
    changed["spec"]["fixed"]["steps"] = 900
    record.write_text(json.dumps(changed, indent=2))
    refused = run_main(launch_main, "--resume", "interrupted", *common)
    assert refused.returncode == 2 and "sweep.json is not the one" in refused.stderr, refused.stderr
    record.write_text(original)

    result = run_main(launch_main, "--resume", "interrupted", *common)  # on the tests' local Ray
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert not (tmp_path / "payload-ran").exists()
    summary = json.loads((root / "summary.json").read_text())
    assert [(t["state"], t["steps"]) for t in summary["trials"]] == [("COMPLETE", 9)] * 2
    _, parent, runs = child_runs(tracking, summary)
    assert parent.info.status == "FINISHED" and len(runs) == 2
