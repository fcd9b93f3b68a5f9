"""benchmarks/rank_correlation.py: how early a trial's rank foretells its final best."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _summary(path: Path, name: str, early: list[float], late: list[float], pruned: int = 0) -> Path:
    """A sweep whose trial i scores early[i] at step 250 and late[i] at step 500 (FID 1,000 times KID)."""
    trials = [{"trial_id": f"trial_{i:04d}", "state": "COMPLETE", "steps": 500, "params": {"optim.lr": i},
               "evaluations": [{"step": 250, "kid": x, "fid": 1000 * x}, {"step": 500, "kid": y, "fid": 1000 * y}]}
              for i, (x, y) in enumerate(zip(early, late))]
    trials += [{"trial_id": f"trial_9{i:03d}", "state": "PRUNED", "steps": 250, "params": {},
                "evaluations": [{"step": 250, "kid": 1.0, "fid": 1000.0}]} for i in range(pruned)]
    file = path / f"{name}.json"
    file.write_text(json.dumps({"name": name, "trials": trials}))
    return file


def _run(monkeypatch, *args) -> int:
    """The command run in this process: its exit code."""
    spec = importlib.util.spec_from_file_location("rank_correlation", ROOT / "benchmarks" / "rank_correlation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", ["rank_correlation.py", *map(str, args)])
    try:
        return module.main()
    except SystemExit as e:
        return e.code


def test_an_early_rank_that_holds_scores_one_and_one_that_flips_keeps_no_winner(tmp_path, monkeypatch, capsys):
    # Sweep a keeps its order from step 250 to 500; in sweep b the early order is reversed (curves cross).
    a = _summary(tmp_path, "a", [0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [0.01, 0.02, 0.03, 0.04, 0.05, 0.06], pruned=2)
    b = _summary(tmp_path, "b", [0.6, 0.5, 0.4, 0.3, 0.2, 0.1], [0.01, 0.02, 0.03, 0.04, 0.05, 0.06])
    out, curves = tmp_path / "out", tmp_path / "curves.json"
    assert _run(monkeypatch, a, "--bootstrap", 50, "--out", out, "--write-curves", curves) == 0
    assert "| 250 | 1.00 [" in capsys.readouterr().out
    kid = json.loads((out / "results.json").read_text())["results"]["kid"]
    assert [r["step"] for r in kid] == [250, 500] and kid[0]["trials"] == 6  # the pruned trials are not ranked
    assert kid[0]["rho_score"][0] == pytest.approx(1.0) and kid[0]["winner_kept"] == 1
    replay = json.loads(curves.read_text())
    assert replay["best"]["config"]["steps"] == 500 and replay["trials"][0]["trial_id"] == "a/trial_0000"

    assert _run(monkeypatch, b, "--bootstrap", 50, "--out", out) == 0
    kid = json.loads((out / "results.json").read_text())["results"]["kid"]
    assert kid[0]["rho_score"][0] == pytest.approx(-1.0) and kid[0]["winner_kept"] == 0
    assert kid[1]["rho_best_so_far"][0] == pytest.approx(1.0)  # at the last step the best so far is the final best


def test_a_sweep_without_complete_trials_or_a_missing_file_is_refused_with_the_fix(tmp_path, monkeypatch, capsys):
    pruned = _summary(tmp_path, "p", [0.1], [0.01], pruned=4)
    assert _run(monkeypatch, pruned, "--out", tmp_path / "out") == 2
    assert "--pruner none" in capsys.readouterr().err
    assert _run(monkeypatch, tmp_path / "nope.json") == 2
    assert "sweeps_out/NAME/summary.json" in capsys.readouterr().err
