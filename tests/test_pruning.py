"""Pruning that decides on signal: the pruners see each trial's best so far, patience and Wilcoxon are offered,
and every decision is logged with the values it compared. A budget stops new trials. No Ray: the bridge alone."""

from __future__ import annotations

import logging

import optuna
import pytest
from conftest import settings, sweep_file, tracking_db

from sweeps.overview import PROGRESS
from sweeps.pruning import MarginHalvingPruner, PatientPruner, explain, make_pruner, pruner_defaults
from sweeps.sweep_file import load_sweep
from sweeps.study import OptunaBridge, open_store, open_study, resumed_seed
from sweeps.tracking import SweepTracker


def _bridge(tmp_path, image_folder, resources=None, **kwargs):
    spec = load_sweep(sweep_file(tmp_path, image_folder, {"model.d_hidden": [8, 16, 32]}, steps=12))
    s = settings(tmp_path, num_trials=6, **kwargs)
    tracker = SweepTracker(tracking_db(tmp_path), spec.dataset)
    parent = tracker.start_parent(s.name, {}, {})
    store = open_store(s)
    return OptunaBridge(spec, open_study(spec, s, spec.trial_config({}), store), store, tracker, parent, s,
                        resources or {"cpu": 1}, spec.trial_config({}))


def test_a_resumed_sweep_draws_new_configs_and_the_same_ones_each_time(tmp_path):
    """A seeded sampler made anew at --resume starts its draws over: without a seed of its own the resumed sweep
    trained again the configs of its first trials (the demo's resumed confirm-none-s1: trials 6 and 7 were
    trials 1 and 2 again)."""
    spec = load_sweep("digits", "demo")
    s = settings(tmp_path, num_trials=8)

    def ask(count):
        study = open_study(spec, s, spec.trial_config({}), open_store(s))
        drawn = []
        for _ in range(count):
            trial = study.ask()
            drawn.append(spec.sample(trial))
            study.tell(trial, 1.0)
        return drawn

    before, after = ask(3), ask(3)
    assert before[0] == spec.first_params()  # the base config, enqueued once
    assert not [p for p in after if p in before], (before, after)
    assert resumed_seed(0, 3) == resumed_seed(0, 3) != resumed_seed(0, 4) and resumed_seed(None, 3) is None


def test_the_pruners_and_their_wrappers():
    patient = make_pruner("median", 1, 3, 12, patience=2)  # patience for best-so-far values
    assert isinstance(patient, PatientPruner) and patient.patience == 2
    assert isinstance(patient.wrapped, optuna.pruners.MedianPruner)
    with pytest.raises(ValueError, match="patience: expected an integer >= 1, got 0"):
        PatientPruner(optuna.pruners.NopPruner(), 0)
    assert isinstance(make_pruner("wilcoxon", 1, 3, 12), optuna.pruners.WilcoxonPruner)
    assert isinstance(make_pruner("none", 1, 3, 12, patience=2), optuna.pruners.NopPruner)
    with pytest.raises(ValueError, match="unknown pruner 'x'"):
        make_pruner("x", 1, 3, 12)


def test_a_sweep_that_names_no_pruner_gets_the_pruner_tables_choice():
    assert pruner_defaults("kid") == ("margin-halving", 0)
    assert pruner_defaults("fid") == ("median", 1)  # margin-halving needs KID's std over subsets
    assert pruner_defaults("kid", "median") == ("median", 1)
    assert pruner_defaults("fid", "successive-halving") == ("successive-halving", 1)


def test_the_pruner_sees_the_best_so_far_and_each_decision_is_logged(tmp_path, image_folder, caplog):
    bridge = _bridge(tmp_path, image_folder, pruner="median", warmup=0)
    for ray_id, fids in (("a", [10.0, 9.0, 8.0, 7.0]), ("b", [11.0, 10.0, 9.0, 8.0])):
        bridge.new_trial(ray_id)
        for i, fid in enumerate(fids):
            assert bridge.report(ray_id, {"step": 3 * (i + 1), "fid": fid}) is False
        bridge.complete(ray_id, {"step": 12}, error=False)
    bridge.new_trial("c")
    with caplog.at_level(logging.INFO, logger="sweeps.study"):
        assert bridge.report("c", {"step": 3, "fid": 9.5}) is False
        assert bridge.report("c", {"step": 6, "fid": 30.0}) is False  # one noisy evaluation: its best is 9.5
        assert bridge.report("c", {"step": 9, "fid": 40.0}) is True  # worse than both at step 9: pruned
    trial = bridge.study.trials[2]
    assert trial.intermediate_values == {3: 9.5, 6: 9.5, 9: 9.5}  # what the pruner saw
    assert [e["fid"] for e in bridge.records["trial_0002"].evaluations] == [9.5, 30.0, 40.0]  # what was measured
    assert "best so far 9.5 at step 6 against 2 other trial(s) there: median 9.5, best 9" in caplog.text
    assert "continues" in caplog.text and "trial_0002 at step 9: FID 40, best so far 9.5" in caplog.text
    assert caplog.text.rstrip().endswith("pruned")
    assert explain([8.0, 9.0], 9, 9.5).startswith("best so far 9.5 at step 9 against 2")


def test_patience_waits_for_evaluations_without_a_new_best(tmp_path, image_folder):
    bridge = _bridge(tmp_path, image_folder, pruner="median", warmup=0, patience=1)
    for ray_id in ("a", "b"):
        bridge.new_trial(ray_id)
        for step in (3, 6, 9):
            bridge.report(ray_id, {"step": step, "fid": 5.0})
        bridge.complete(ray_id, {"step": 12}, error=False)
    bridge.new_trial("c")
    assert bridge.report("c", {"step": 3, "fid": 50.0}) is False  # worse than the median, but patient:
    assert bridge.report("c", {"step": 6, "fid": 40.0}) is False  # a new best
    assert bridge.report("c", {"step": 9, "fid": 70.0}) is True  # one evaluation without one


def test_no_new_trial_starts_once_the_cpu_budget_is_spent(tmp_path, image_folder):
    bridge = _bridge(tmp_path, image_folder, pruner="none", budget_cpu_hours=1.0)
    assert bridge.new_trial("a") is not None
    bridge.report("a", {"step": 3, "fid": 5.0, "trial_seconds": 1800.0})
    assert bridge.new_trial("b") is not None  # half an hour of one CPU spent
    bridge.report("b", {"step": 3, "fid": 6.0, "trial_seconds": 1800.0})
    assert bridge.new_trial("c") is None  # an hour: no new trial
    assert bridge.report("b", {"step": 6, "fid": 5.5, "trial_seconds": 3600.0}) is False  # the running ones go on


def test_a_gpu_budget_counts_gpu_hours_only(tmp_path, image_folder):
    """Four trials to a GPU: two hours of trials are half a GPU-hour (and two CPU-hours, which do not count)."""
    bridge = _bridge(tmp_path, image_folder, {"cpu": 1, "gpu": 0.25}, pruner="none", budget_gpu_hours=1.0)
    for ray_id in "ab":
        assert bridge.new_trial(ray_id) is not None
        bridge.report(ray_id, {"step": 3, "fid": 5.0, "trial_seconds": 3600.0})
    assert bridge.new_trial("c") is not None  # 0.5 GPU-hours of 1
    bridge.report("c", {"step": 3, "fid": 5.0, "trial_seconds": 7200.0})
    assert bridge.new_trial("d") is None  # 1.0 GPU-hour


def test_a_gpu_budget_for_trials_without_gpus_is_refused_before_anything_runs(tmp_path, image_folder):
    """Without GPUs a GPU budget would never bind (it used to count CPU-hours under the GPU flag's name)."""
    from sweeps import preflight
    from sweeps.driver import _check_budget
    from sweeps.sweep import SweepError

    s = settings(tmp_path, budget_gpu_hours=1.0)
    with pytest.raises(SweepError, match="--budget-gpu-hours: the trials take no GPU.*--budget-cpu-hours"):
        _check_budget(s, {"cpu": 1})
    _check_budget(s, {"cpu": 1, "gpu": 1})
    spec = load_sweep(sweep_file(tmp_path, image_folder, {"model.d_hidden": [8, 16]}))
    s.gpus_per_trial = 0
    assert any("--budget-gpu-hours with --gpus-per-trial 0" in p for p in preflight.problems(spec, s))


def test_a_report_costs_the_same_however_many_trials_the_study_holds(tmp_path, image_folder, monkeypatch):
    """Without a pruner that compares trials, a report reads no trial back from the study, and writes one
    attribute beside its value: nothing in it grows with the sweep (BENCHMARKS.md, the control plane at 1,000
    trials). Its explanation comes from the bridge's own values by step, as the pruner's would."""
    bridge = _bridge(tmp_path, image_folder, pruner="none", warmup=0)
    for ray_id in ("a", "b", "c"):
        bridge.new_trial(ray_id)
        bridge.report(ray_id, {"step": 3, "fid": {"a": 7.0, "b": 5.0, "c": 6.0}[ray_id]})
    reads, writes = [], []
    storage = type(bridge.study._storage)
    for name, calls in (("get_all_trials", reads), ("set_trial_user_attr", writes)):
        plain = getattr(storage, name)
        monkeypatch.setattr(storage, name, lambda self, *a, _plain=plain, _calls=calls, **k: (
            _calls.append(a), _plain(self, *a, **k))[1])
    bridge.new_trial("d")
    reads.clear(), writes.clear()
    assert bridge.report("d", {"step": 3, "fid": 5.5, "trial_seconds": 2.0}) is False
    assert reads == [] and len(writes) == 1
    assert bridge._at_step[3] == [5.0, 5.5, 6.0, 7.0]
    assert explain(bridge._at_step[3][:1], 3, 5.5) == ("best so far 5.5 at step 3 against 1 other trial(s) there: "
                                                       "median 5, best 5")
    progress = bridge.study.trials[3].user_attrs["fpa.progress"]
    assert progress["seconds"] == 2.0 and progress["evaluations"][0]["fid"] == 5.5


def _study_with(values_at_500: list[tuple[float, float]]) -> optuna.Study:
    """Finished trials whose best KID at step 500 (their rung) and its std over subsets are given."""
    study = optuna.create_study(direction="minimize")
    for value, std in values_at_500:
        trial = study.ask()
        trial.report(value, 500)
        trial.set_user_attr(PROGRESS, {"evaluations": [{"step": 500, "kid": value, "kid_std": std}]})
        study.tell(trial, value)
    return study


def _prunes(pruner, study: optuna.Study, value: float, std: float) -> bool:
    trial = study.ask()
    trial.report(value, 500)
    trial.set_user_attr(PROGRESS, {"evaluations": [{"step": 500, "kid": value, "kid_std": std}]})
    return trial.should_prune()


def test_margin_halving_stops_a_trial_outside_the_cut_only_beyond_the_noise_of_the_comparison():
    pruner = make_pruner("margin-halving", 0, 500, 2000)  # rungs at 500 and 1,500; the best third goes on
    assert isinstance(pruner, MarginHalvingPruner) and (pruner.min_resource, pruner.reduction_factor) == (500, 3)
    kept = [(0.010, 0.002), (0.011, 0.002), (0.020, 0.002), (0.030, 0.002), (0.040, 0.002)]
    # With a sixth trial the cut is the 2nd best, 0.011; the margin 0.5 * sqrt(0.002^2 + 0.002^2) = 0.0014.
    study = _study_with(kept)
    study.pruner = pruner
    assert not _prunes(pruner, study, 0.0122, 0.002)  # outside the best third, within noise of its cut
    study = _study_with(kept)
    study.pruner = pruner
    assert _prunes(pruner, study, 0.0126, 0.002)  # beyond it
    study = _study_with(kept)
    study.pruner = pruner
    trial = study.ask()
    trial.report(0.2, 250)
    assert not trial.should_prune()  # before its first rung nothing is decided
    with pytest.raises(ValueError, match="reduction_factor >= 2"):
        MarginHalvingPruner(500, 1)


def test_margin_halving_needs_kid_and_is_refused_before_anything_runs_on_fid(tmp_path, image_folder):
    from sweeps import preflight

    spec = load_sweep(sweep_file(tmp_path, image_folder, {"model.d_hidden": [8, 16]}))
    refused = preflight.problems(spec, settings(tmp_path, pruner="margin-halving", metric="fid"))
    assert any("--pruner margin-halving with --metric fid" in p and "--metric kid" in p for p in refused)
    assert not any("margin-halving" in p for p in preflight.problems(
        spec, settings(tmp_path, pruner="margin-halving", metric="kid")))
