"""The sweep service against real services: a local Ray, Optuna and MLflow stores, an S3 server, PostgreSQL."""

from __future__ import annotations

import json
import time
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from fpa_core import storage
from conftest import child_runs, free_port, own_ray, run_launch, run_main, settings, sweep_file, tracking_db

ray = pytest.importorskip("ray")

import torch  # noqa: E402

from fpa_core import checkpoint  # noqa: E402
from fpa_core.train.trainer import Trainer  # noqa: E402
from sweeps.cli.continue_best import main as continue_main  # noqa: E402
from sweeps.driver import SweepSettings, run_sweep  # noqa: E402
from sweeps.registry import promote  # noqa: E402
from sweeps.cli.launch import main as launch_main  # noqa: E402
from sweeps.sweep import SweepError  # noqa: E402
from sweeps.sweep_file import load_sweep  # noqa: E402


def test_a_local_sweep_records_every_trial(tmp_path, image_folder, local_ray):
    spec = load_sweep(sweep_file(tmp_path, image_folder, {"model.d_hidden": [8, 16], "model.num_layers": [1, 2]}))
    s = settings(tmp_path)
    summary = run_sweep(spec, s)

    on_disk = json.loads(Path(s.storage, s.name, "summary.json").read_text())
    assert on_disk == summary
    assert {"name", "dataset", "tracking_uri", "parent_run_id", "fid_calibrated", "best", "trials"} <= set(summary)
    assert summary["fid_calibrated"] is True and summary["metric"] == "fid"
    assert len(summary["trials"]) == 4 and {t["state"] for t in summary["trials"]} == {"COMPLETE"}
    assert all(t["steps"] == 6 and t["best"]["fid"] is not None for t in summary["trials"])
    best = summary["best"]
    assert best["fid"] == min(t["best"]["fid"] for t in summary["trials"])
    assert Path(best["checkpoint"]).is_file() and best["config"]["model"]["d_hidden"] in (8, 16)

    # Retention: the best 3 (--keep-full's default) keep every checkpoint; the fourth keeps its generator.
    ranked = sorted(summary["trials"], key=lambda t: t["best_value"])
    assert [t["kept"] for t in ranked] == ["full", "full", "full", "generator"]
    folders = {t["trial_id"]: Path(s.storage, s.name, "trials", t["trial_id"], "checkpoints") for t in ranked}
    assert all(sorted(folders[t["trial_id"]].glob("latest-*.pt")) for t in ranked[:3])
    last = folders[ranked[-1]["trial_id"]]
    assert sorted(p.name for p in last.iterdir()) == ["best.pt"]
    trimmed = checkpoint.load(str(last / "best.pt"))
    assert trimmed["trimmed"] and {"generator", "generator_ema", "evaluations"} <= set(trimmed)
    assert not {"discriminator", "opt_g", "opt_d", "rng"} & set(trimmed)
    assert isinstance(checkpoint.load_generator(str(last / "best.pt")), torch.nn.Module)  # it still paints
    with pytest.raises(ValueError, match="trimmed by its sweep"):  # no run continues from it
        Trainer.resume(str(last.parent), {"steps": 9})
    refused = run_main(continue_main, "--sweep", s.name, "--top-k", "4", "--steps", "9", "--storage", s.storage,
                       "--tracking-uri", s.tracking_uri)
    assert refused.returncode == 2 and f"reaches {ranked[-1]['trial_id']}, which sweep" in refused.stderr
    promoted = promote(str(last / "best.pt"), ranked[-1]["run_id"], s.tracking_uri)  # it still promotes
    assert promoted.version == 1 and promoted.champion

    client, parent, runs = child_runs(s.tracking_uri, summary)
    assert parent.info.status == "FINISHED" and len(runs) == 4
    # The link the sweep prints opens the experiment on its training runs, not MLflow 3's GenAI view.
    assert summary["mlflow_url"] == (f"http://127.0.0.1:5000/#/experiments/{parent.info.experiment_id}"
                                     "?workflowType=machine_learning")
    assert {r.info.run_id for r in runs} == {t["run_id"] for t in summary["trials"]}
    run = client.get_run(best["run_id"])
    assert run.data.params["model.d_hidden"] == str(best["config"]["model"]["d_hidden"])
    assert [m.step for m in client.get_metric_history(best["run_id"], "fid")] == [3, 6]
    artifacts = {a.path for a in client.list_artifacts(best["run_id"])}
    assert {"images", "painting", "summary.json"} <= artifacts  # images: the grids and strips, keyed by step
    images = [a.path for a in client.list_artifacts(best["run_id"], "images")]
    assert {p.split("/")[1].split("+step+")[0] for p in images} == {"samples", "painting"}  # MLflow's key+step+... names
    assert {int(p.split("+step+")[1].split("+")[0]) for p in images} == {3, 6}
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    best_so_far = client.get_metric_history(parent.info.run_id, "best_fid")
    assert [m.value for m in best_so_far] == sorted((m.value for m in best_so_far), reverse=True)
    assert [m.step for m in best_so_far] == sorted(m.step for m in best_so_far)
    assert run.data.tags["fpa.best_checkpoint"].endswith("best.pt")
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"best_config.yaml", "fid_vs_step.png",
                                                                          "space.yaml", "summary.json"}
    study = optuna.load_study(study_name=s.name, storage=f"sqlite:///{Path(s.storage, s.name, 'optuna.db')}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    assert not any("password" in json.dumps(p).lower() for p in (run.data.params, run.data.tags))


def test_the_pruner_stops_a_clearly_worse_trial(tmp_path, image_folder, local_ray):
    # A painter that does not learn (lr 1e-6) keeps the FID of its initial grey images, clearly worse at
    # every evaluation than one that learns fast (lr 0.05), with the seeds fixed.
    spec = load_sweep(sweep_file(tmp_path, image_folder, {"optim.lr": [0.05, 1.0e-6]}, steps=9))
    s = settings(tmp_path, num_trials=3, max_concurrent=1, pruner="median", warmup=1)
    storage_url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name=s.name, storage=storage_url, direction="minimize")
    for lr in (0.05, 0.05, 1.0e-6):  # two good trials first, so that the median exists
        study.enqueue_trial({"optim.lr": lr})
    summary = run_sweep(spec, SweepSettings(**{**s.__dict__, "optuna_storage": storage_url}))

    bad = next(t for t in summary["trials"] if t["params"]["optim.lr"] == 1.0e-6)
    assert bad["state"] == "PRUNED" and bad["steps"] == 6, [(t["params"], t["evaluations"]) for t in summary["trials"]]
    assert [t["state"] for t in summary["trials"] if t["params"]["optim.lr"] == 0.05] == ["COMPLETE"] * 2
    trials = optuna.load_study(study_name=s.name, storage=storage_url).trials
    assert sorted(t.state.name for t in trials) == ["COMPLETE", "COMPLETE", "PRUNED"]
    run = MlflowClient(s.tracking_uri).get_run(bad["run_id"])
    assert run.data.tags["fpa.state"] == "PRUNED" and run.data.tags["fpa.pruned_at_step"] == "6"
    assert run.info.status == "KILLED"


def test_mlflow_and_optuna_on_postgresql(tmp_path, image_folder, local_ray, postgres_databases):
    tracking, optuna_url = postgres_databases
    spec = load_sweep(sweep_file(tmp_path, image_folder, {"model.d_hidden": [8, 16]}))
    s = settings(tmp_path, num_trials=2, tracking_uri=tracking, optuna_storage=optuna_url)
    summary = run_sweep(spec, s)
    assert {t["state"] for t in summary["trials"]} == {"COMPLETE"}
    study = optuna.load_study(study_name=s.name, storage=optuna_url)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    _, parent, runs = child_runs(tracking, summary)
    assert parent.data.tags["fpa.sweep"] == s.name and len(runs) == 2


def test_a_killed_trial_restarts_from_its_checkpoint_in_the_same_run(tmp_path, image_folder, local_ray):
    import threading

    import psutil

    spec = load_sweep(sweep_file(tmp_path, image_folder, {"model.d_hidden": [8]}, steps=15))
    s = settings(tmp_path, num_trials=1, max_failures=2)
    experiment = Path(s.storage, s.name)
    killed = []

    def kill_after_first_evaluation():
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not killed:
            if list(experiment.glob("trial_*/checkpoint_000000")):  # Tune has the first report and its checkpoint
                for process in psutil.process_iter(["cmdline"]):
                    if "ImplicitFunc" in " ".join(process.info["cmdline"] or []):
                        process.kill()  # SIGKILL: the trial's process dies mid-run
                        killed.append(process.pid)
                return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_after_first_evaluation, daemon=True)
    killer.start()
    summary = run_sweep(spec, s)
    killer.join(timeout=5)
    assert killed, "the trial finished before it could be killed"
    (trial,) = summary["trials"]
    assert trial["state"] == "COMPLETE" and trial["steps"] == 15
    # Every evaluation is reported once: one that the dead process wrote into its checkpoint but had not
    # reported yet is reported when the trial restarts from that checkpoint.
    evaluations = [3, 6, 9, 12, 15]
    assert [e["step"] for e in trial["evaluations"]] == evaluations
    client, _, runs = child_runs(s.tracking_uri, summary)
    assert len(runs) == 1 and runs[0].info.run_id == trial["run_id"]  # the restart logged into the same run
    assert sorted({m.step for m in client.get_metric_history(trial["run_id"], "fid")}) == evaluations


def test_a_diverging_trial_fails_once_and_says_why(tmp_path, image_folder, local_ray):
    """A NaN loss fails the same way on every retry: the trial ends as ERROR without Ray's retries, its reason
    in summary.json, the MLflow run (tag and error.txt) and the Optuna trial."""
    spec = load_sweep(sweep_file(tmp_path, image_folder, {"optim.lr": [1.0e10]}))  # NaN at the first step
    s = settings(tmp_path, num_trials=1, max_failures=2)
    summary = run_sweep(spec, s)

    (trial,) = summary["trials"]
    assert trial["state"] == "ERROR" and "NonFiniteLossError: non-finite loss at step 1" in trial["error"]
    assert summary["best"] is None
    assert not (Path(s.storage, s.name, trial["trial_id"], "error.txt")).exists()  # Ray saw no failure to retry
    client = MlflowClient(s.tracking_uri)
    run = client.get_run(trial["run_id"])
    assert run.info.status == "FAILED" and "non-finite loss" in run.data.tags["fpa.error"]
    assert "error.txt" in {a.path for a in client.list_artifacts(trial["run_id"])}
    study = optuna.load_study(study_name=s.name, storage=s.optuna_storage)
    assert study.trials[0].state.name == "FAIL" and "non-finite" in study.trials[0].user_attrs["fpa.error"]


@pytest.mark.process
def test_launch_rejects_bad_input_before_any_work(tmp_path):
    result = run_main(launch_main, "--dataset", "ffhq")
    assert result.returncode == 2 and "ffhq" in result.stderr and "metfaces" in result.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"dataset": "digits", "base": "digits",
                                   "space": {"model.rule": ["delta", "hebb"], "model.d_hiden": [1]}}))
    result = run_main(launch_main, "--dataset", str(bad))
    assert result.returncode == 2 and "model.rule" in result.stderr and "model.d_hiden" in result.stderr
    result = run_main(launch_main, "--dataset", "digits", "--tracking-uri", "http://admin:hunter2@127.0.0.1:5000")
    assert result.returncode == 2 and "MLFLOW_TRACKING_PASSWORD" in result.stderr
    assert "hunter2" not in result.stderr
    result = run_main(launch_main, "--dataset", "digits", "--storage", "s3://", "--tracking-uri", "http://[::1:5000")
    assert result.returncode == 2 and "--storage s3://: an S3 location must name a bucket" in result.stderr
    assert "--tracking-uri 'http://[::1:5000' is not a valid URI" in result.stderr
    result = run_main(launch_main, "--dataset", "digits", "--num-trials", "0", "--detach")
    assert result.returncode == 2 and "--num-trials" in result.stderr and "--detach" in result.stderr
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result = run_main(launch_main, "--dataset", "digits", "--submit", closed)
    assert result.returncode == 2 and f"--submit {closed}: no Ray job server answers there" in result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("error:") == 1
    result = run_launch("--dataset", "digits", "--set", "fid.backbone=inception", "--storage", str(tmp_path / "o"),
                        "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}", timeout=300,
                        env={"FPA_FID_WEIGHTS": str(tmp_path / "missing.pth")})
    assert result.returncode == 2 and "inception-random" in result.stderr
    assert not (tmp_path / "o").exists()  # stopped before any trial


def test_a_bug_in_a_running_sweep_is_not_reported_as_a_usage_error(monkeypatch, tmp_path, image_folder):
    """Exit 2 means "the command line cannot run"; a ValueError from inside a sweep is a bug, with its traceback."""
    import sweeps.driver

    def broken(spec, settings):
        raise ValueError("an internal invariant broke")

    monkeypatch.setattr(sweeps.driver, "run_sweep", broken)
    sweep = sweep_file(tmp_path, image_folder, {"model.d_hidden": [8, 16]})
    with pytest.raises(ValueError, match="an internal invariant broke"):
        launch_main(["--dataset", sweep, "--storage", str(tmp_path / "o"), "--tracking-uri",
                     tracking_db(tmp_path)])

    def refused(spec, settings):
        raise SweepError("sweep x cannot run: the fix")

    monkeypatch.setattr(sweeps.driver, "run_sweep", refused)
    result = run_main(launch_main, "--dataset", sweep, "--storage", str(tmp_path / "o"), "--tracking-uri",
                      tracking_db(tmp_path))
    assert result.returncode == 2 and "error: sweep x cannot run: the fix" in result.stderr


def test_a_trial_that_cannot_train_fails_for_good_without_retries(tmp_path):
    """Too few images, a dataset that changed, no bfloat16 or no CUDA: a retry fails the same way, so the trial
    ends at once with its reason instead of Ray retrying it --max-failures times."""
    from PIL import Image

    from fpa_core.train.config import build_config
    from fpa_core.train.trainer import Trainer
    from sweeps.trainable import DETERMINISTIC

    one = tmp_path / "one"
    one.mkdir()
    Image.new("RGB", (16, 16)).save(one / "a.png")
    config = build_config({}, {"data": {"dataset": str(one), "resolution": 16}, "model": {"height": 16, "width": 16},
                               "fid": {"backbone": "inception-random"}, "device": "cpu"})
    with pytest.raises(DETERMINISTIC, match="holds 1 readable image"):
        Trainer(config, str(tmp_path / "run"))


def test_the_failure_key_is_written_once(tmp_path):
    root = Path(__file__).resolve().parent.parent
    text = "".join(p.read_text() for folder in ("fpa_core", "sweeps") for p in (root / folder).rglob("*.py"))
    assert text.count('"fpa_failed"') == 1


def _most_at_once(summary: dict) -> int:
    """The most trials that were training at one moment, from the times in their metrics.jsonl."""
    spans = []
    for t in summary["trials"]:
        lines = Path(summary["settings"]["storage"], summary["name"], "trials", t["trial_id"],
                     "metrics.jsonl").read_text().splitlines()
        times = [json.loads(line)["time"] for line in lines]
        spans.append((min(times), max(times)))
    return max(sum(1 for s, e in spans if s <= start <= e) for start, _ in spans)


@pytest.mark.ray
def test_logical_gpus_bound_the_trials_running_at_once(tmp_path, image_folder):
    own_ray()
    ray.init(address="local", num_cpus=4, num_gpus=2, include_dashboard=False, configure_logging=False)
    try:
        spec = load_sweep(sweep_file(tmp_path, image_folder, {"model.d_hidden": [8, 16]}))
        summary = run_sweep(spec, settings(tmp_path, num_trials=4))
    finally:
        ray.shutdown()
    assert all(len(t["gpu_ids"]) == 1 for t in summary["trials"])
    assert _most_at_once(summary) <= 2  # at any moment at most two trials hold a GPU


@pytest.mark.ray
def test_four_trials_share_one_logical_gpu_each_capped_at_its_share(tmp_path, image_folder):
    """--gpus-per-trial 0.25: four trials at once on one GPU (Ray's logical GPU on this CPU machine), each with
    its CUDA memory capped at a quarter (the cap it would set; recorded in its placement), and the sweep's cost
    counted in GPU-hours of those quarters."""
    own_ray()
    ray.init(address="local", num_cpus=4, num_gpus=1, include_dashboard=False, configure_logging=False)
    try:
        spec = load_sweep(sweep_file(tmp_path, image_folder, {"model.d_hidden": [8, 16]}, steps=24, log_every=1,
                                     **{"fid.every": 12, "checkpoint.every": 12}))  # two evaluations, not eight
        summary = run_sweep(spec, settings(tmp_path, num_trials=4, gpus_per_trial=0.25, pruner="none"))
    finally:
        ray.shutdown()
    assert [t["gpu_memory_fraction"] for t in summary["trials"]] == [0.25] * 4
    assert {tuple(t["gpu_ids"]) for t in summary["trials"]} == {("0",)}  # all on the one GPU
    assert _most_at_once(summary) == 4  # all four at once
    cost = summary["cost"]
    seconds = sum(t["seconds"] for t in summary["trials"])
    assert seconds > 0 and cost["gpu_hours"] == pytest.approx(seconds * 0.25 / 3600)
    assert cost["cpu_hours"] == pytest.approx(seconds / 3600) and cost["wall_hours"] > 0


@pytest.mark.ray
def test_a_two_node_cluster_spreads_the_trials(tmp_path, image_folder):
    from ray.cluster_utils import Cluster

    own_ray()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    try:
        ray.init(address=cluster.address)
        spec = load_sweep(sweep_file(tmp_path, image_folder, {"model.d_hidden": [8, 16]}))
        summary = run_sweep(spec, settings(tmp_path, num_trials=4))
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert {t["state"] for t in summary["trials"]} == {"COMPLETE"}
    assert len({t["node_id"] for t in summary["trials"]}) == 2


def test_a_sweep_on_s3_and_an_mlflow_server(tmp_path, image_folder, s3_bucket, mlflow_server, fresh_ray):
    spec = load_sweep(sweep_file(tmp_path, image_folder, {"model.d_hidden": [8, 16]}))
    s = settings(tmp_path, num_trials=2, storage=f"s3://{s3_bucket}/sweeps", tracking_uri=mlflow_server,
                 optuna_storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    summary = run_sweep(spec, s)
    assert {t["state"] for t in summary["trials"]} == {"COMPLETE"}
    root = f"s3://{s3_bucket}/sweeps/{s.name}"
    assert json.loads(storage.read_bytes(f"{root}/summary.json"))["name"] == s.name
    for t in summary["trials"]:
        assert "best.pt" in storage.list_names(f"{root}/trials/{t['trial_id']}/checkpoints")
    assert summary["best"]["checkpoint"].startswith("s3://")
    import boto3

    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=s3_bucket, Prefix="mlartifacts/")["Contents"]]
    assert any(k.endswith(".png") and "/images/samples+step+" in k for k in keys)  # pictures went through the server
    assert any(k.endswith("fid_vs_step.png") for k in keys)


