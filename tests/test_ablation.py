"""Ablation grids (grid: and seeds: in a sweep file): every cell and seed once, through Ray, Optuna and MLflow,
a resumed grid repeating nothing, and the table and plot of the results."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import yaml

from conftest import TINY_FIXED, child_runs, run_main, settings, tracking_db

pytest.importorskip("ray")

from sweeps.driver import run_sweep  # noqa: E402
from sweeps.cli.launch import main as launch_main  # noqa: E402
from fpa_core.config import ConfigError
from sweeps.sweep_file import load_sweep

GRID = {"model.rule": ["additive", "delta"], "model.steps": [2]}  # delta is the centre's: not a cell of its own


def grid_file(tmp_path: Path, dataset: Path, seeds: int = 2, **extra) -> str:
    path = tmp_path / "grid.yaml"
    fixed = {**TINY_FIXED, "steps": 3, "fid.every": 3, "checkpoint.every": 3}
    path.write_text(yaml.safe_dump({"dataset": str(dataset), "base": "digits", "fixed": fixed, "grid": GRID,
                                    "seeds": seeds, **extra}))
    return str(path)


def test_the_cells_are_the_centre_then_one_axis_at_a_time(tmp_path, image_folder):
    spec = load_sweep(grid_file(tmp_path, image_folder))
    assert spec.cells() == [("centre", {}), ("model.rule=additive", {"model.rule": "additive"}),
                            ("model.steps=2", {"model.steps": 2})]
    assert (spec.num_trials, spec.pruner, spec.seeds) == (6, "none", 2)
    for bad, message in (({"pruner": "median"}, "pruner: 'median': an ablation runs every cell"),
                         ({"num_trials": 4}, "the grid runs 3 cells x 2 seeds = 6 trials"),
                         ({"space": {"optim.lr": [1e-3]}}, "space: an ablation (grid) samples nothing")):
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_sweep(grid_file(tmp_path, image_folder, **bad))
    result = run_main(launch_main, "--dataset", grid_file(tmp_path, image_folder), "--num-trials", "4",
                      "--pruner", "median")
    assert result.returncode == 2 and "6 trials; drop --num-trials" in result.stderr and "--pruner" in result.stderr


def test_an_ablation_runs_every_cell_and_seed_once_and_writes_its_table(tmp_path, image_folder, local_ray):
    spec = load_sweep(grid_file(tmp_path, image_folder))
    s = settings(tmp_path, num_trials=spec.num_trials, pruner="none")
    summary = run_sweep(spec, s)

    runs = sorted((t["params"].get("model.rule", "-"), str(t["params"].get("model.steps", "-")), t["params"]["seed"])
                  for t in summary["trials"])
    assert runs == [("-", "-", 0), ("-", "-", 1), ("-", "2", 0), ("-", "2", 1), ("additive", "-", 0),
                    ("additive", "-", 1)]
    assert {t["state"] for t in summary["trials"]} == {"COMPLETE"}
    rows = {row["cell"]: row for row in summary["ablation"]}
    assert list(rows) == ["centre", "model.rule=additive", "model.steps=2"]
    assert all(row["seeds"] == [0, 1] and row["step"] == 3 and row["fid_mean"] > 0 and row["kid_std"] is not None
               for row in rows.values())
    folder = Path(s.storage, s.name)
    table = (folder / "ablation.md").read_text()
    assert "| model.steps=2 | 2 | 3 |" in table and "model.rule = delta" in table
    assert (folder / "ablation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((folder / "summary.json").read_text())["ablation"] == summary["ablation"]
    client, parent, _ = child_runs(s.tracking_uri, summary)
    assert {"ablation.md", "ablation.png"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}


def test_a_resumed_ablation_runs_only_the_cells_it_has_not_run(tmp_path, image_folder):
    """A new driver's bridge on the same study (as after --resume): GridSampler hands out the cells and seeds
    that have not run, never one that has."""
    from sweeps.study import OptunaBridge, open_store, open_study
    from sweeps.tracking import SweepTracker

    spec = load_sweep(grid_file(tmp_path, image_folder))
    s = settings(tmp_path, num_trials=spec.num_trials, pruner="none")
    tracker = SweepTracker(tracking_db(tmp_path), spec.dataset)
    parent = tracker.start_parent(s.name, {}, {})

    def bridge():
        store = open_store(s)
        return OptunaBridge(spec, open_study(spec, s, spec.trial_config({}), store), store, tracker, parent, s,
                            {"cpu": 1}, spec.trial_config({}))

    def cell(task):
        return task.config.model.rule, task.config.model.steps, task.config.seed

    first = bridge()
    before = [cell(first.new_trial(f"ray-{i}")) for i in range(3)]
    for i in range(3):
        first.report(f"ray-{i}", {"step": 3, "fid": 10.0 + i, "kid": 0.1})
        first.complete(f"ray-{i}", {"step": 3}, error=False)
    second = bridge()
    second.reconcile()
    after = [cell(second.new_trial(f"ray-{i}")) for i in range(3, 6)]
    assert len(set(before + after)) == 6  # every cell and seed, none twice
    assert set(before + after) == {(rule, steps, seed) for rule, steps in
                                   (("delta", 4), ("additive", 4), ("delta", 2)) for seed in (0, 1)}
    study = optuna.load_study(study_name=s.name, storage=s.optuna_storage)
    assert len(study.trials) == 6
