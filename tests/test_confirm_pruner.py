"""benchmarks/confirm_pruner.py: a pruned sweep against the same sweep unpruned."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("confirm_pruner", ROOT / "benchmarks" / "confirm_pruner.py")
confirm = importlib.util.module_from_spec(spec)
spec.loader.exec_module(confirm)


def _sweep(root: Path, name: str, curves: list[list[float]], stop: list[int], lrs=(1e-3, 2e-3, 5e-4)) -> None:
    """A finished KID sweep whose trial i scores curves[i][k] at step 250 * (k + 1), stopped after stop[i] scores."""
    trials = []
    for i, (curve, n) in enumerate(zip(curves, stop)):
        evaluations = [{"step": 250 * (k + 1), "kid": v, "fid": 1000 * v} for k, v in enumerate(curve[:n])]
        trials.append({"trial_id": f"trial_{i:04d}", "state": "COMPLETE" if n == len(curve) else "PRUNED",
                       "steps": 250 * n, "best_value": min(curve[:n]), "params": {"optim.lr": lrs[i]},
                       "evaluations": evaluations, "seconds": 10.0 * n})
    (root / name).mkdir(parents=True)
    (root / name / "summary.json").write_text(json.dumps({"name": name, "settings": {"metric": "kid"},
                                                          "trials": trials}))


def test_a_pruned_arm_is_scored_against_its_unpruned_counterfactual(tmp_path, capsys):
    curves = [[0.5, 0.1, 0.010, 0.0050], [0.3, 0.2, 0.015, 0.0120], [0.6, 0.4, 0.300, 0.2000]]
    _sweep(tmp_path, "full", curves, [4, 4, 4])
    _sweep(tmp_path, "cut", curves, [4, 1, 1])  # the winner kept, the others stopped at 250
    _sweep(tmp_path, "lost", curves, [1, 4, 1])  # the winner stopped at 250: regret (0.012 - 0.005) / 0.0005
    out = tmp_path / "rows.json"
    assert confirm.main(["--storage", str(tmp_path), "full:cut", "full:lost", "--out", str(out)]) == 0
    cut, lost = json.loads(out.read_text())
    assert cut["trial_steps"] == [3000, 1500] and cut["fewer_steps"] == 2.0
    assert cut["unpruned_best_state"] == "COMPLETE" and cut["regret"] == 0.0
    assert cut["differing_evaluations"] == 0 and cut["steps"] == [1000, 250, 250]
    assert lost["unpruned_best_state"] == "PRUNED" and abs(lost["regret"] - 14.0) < 1e-9
    assert "kept in 1/2, evaluations that differ between the arms: 0" in capsys.readouterr().out
    # A resumed arm's sampler drew another last config: the pair is judged on the first two.
    _sweep(tmp_path, "resumed", curves, [4, 1, 1], lrs=(1e-3, 2e-3, 9e-3))
    row = confirm.compare(*(json.loads((tmp_path / n / "summary.json").read_text()) for n in ("full", "resumed")))
    assert row["trials"] == 2 and row["trial_steps"] == [2000, 1250] and row["steps"] == [1000, 250]


def test_arms_of_other_configs_or_other_evaluations_are_named(tmp_path, capsys):
    _sweep(tmp_path, "full", [[0.5, 0.1]], [2])
    _sweep(tmp_path, "other", [[0.5, 0.1]], [2], lrs=(7e-3,))
    _sweep(tmp_path, "noisy", [[0.4, 0.1]], [2])
    for argv, message in ((["full:other"], "did not sweep the same configs: use the same --seed"),
                          (["full:missing"], "missing/summary.json: no such summary"),
                          (["full"], "'full': expected UNPRUNED:PRUNED")):
        try:
            confirm.main(["--storage", str(tmp_path), *argv])
        except SystemExit as e:
            assert e.code == 2
        assert message in capsys.readouterr().err
    rows = confirm.compare(*(json.loads((tmp_path / n / "summary.json").read_text()) for n in ("full", "noisy")))
    assert rows["differing_evaluations"] == 1  # not deterministic: the unpruned arm is no counterfactual
