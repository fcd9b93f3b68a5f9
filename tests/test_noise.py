"""The noise rule that promotion and a sweep's "best" share: better only beyond twice the std of the difference."""

from __future__ import annotations

import math

import pytest

from fpa_core.metrics.noise import Noisy, compare, spread, tied_with_best

pytest.importorskip("ray")

from sweeps.driver import _tied, continued_trials  # noqa: E402
from sweeps.trials import TrialRecord  # noqa: E402


def test_a_difference_counts_only_beyond_twice_the_std_of_the_difference():
    champion = Noisy(31.72, 0.63, "std over 3 fresh latent seeds")  # the demo champion's FID and its seed std
    margin = 2 * math.hypot(0.63, 0.63)  # 1.78
    assert not compare(Noisy(31.72 - 0.9 * margin, 0.63, "s"), champion).better  # lower, but within noise
    beyond = compare(Noisy(31.72 - 1.1 * margin, 0.63, "s"), champion)
    assert beyond.better and beyond.margin == pytest.approx(margin) and beyond.std == pytest.approx(margin / 2)
    assert "beyond the noise margin 1.78" in beyond.describe("FID")
    worse = compare(Noisy(40.0, 0.63, "s"), champion)
    assert not worse.better and worse.describe("FID").startswith("FID higher by 8.28, within")
    assert compare(Noisy(1.0, 0.0, "s"), Noisy(1.0 + 1e-9, 0.0, "s")).better  # no noise: any difference counts


def test_the_trials_tied_with_the_best_are_those_it_does_not_beat_beyond_noise():
    scores = [Noisy(0.0120, 0.0005, "k"), Noisy(0.0100, 0.0005, "k"), Noisy(0.0300, 0.0005, "k"),
              Noisy(0.0112, 0.0005, "k")]
    assert tied_with_best(scores) == [1, 3]  # 0.0112 is 1.7 std of the difference above the best; 0.0120 is 2.8
    assert tied_with_best(scores, z=3.0) == [1, 3, 0]
    assert tied_with_best([]) == []


def test_a_spread_needs_two_repeats_and_a_noisy_score_a_finite_value():
    noisy = spread(31.0, [31.5, 32.5, 31.0], "std over 3 fresh latent seeds")
    assert noisy.value == 31.0 and noisy.std == pytest.approx(0.7637626)
    with pytest.raises(ValueError, match="at least 2 repeated evaluations"):
        spread(31.0, [31.5], "s")
    with pytest.raises(ValueError, match="finite value and std >= 0"):
        Noisy(float("nan"), 0.1, "s")


def _record(trial_id: str, kid: float, kid_std: float, fid: float, metric: str) -> TrialRecord:
    record = TrialRecord(trial_id, int(trial_id[-1]), "run", {}, None, metric, state="COMPLETE")
    record.evaluations = [{"step": 500, "fid": fid, "kid": kid, "kid_std": kid_std}]
    return record


def test_a_sweep_summary_names_the_trials_within_noise_of_its_best_and_continue_takes_them():
    records = [_record("trial_0000", 0.0042, 0.0003, 32.3, "kid"), _record("trial_0001", 0.0047, 0.0004, 35.0, "kid"),
               _record("trial_0002", 0.0090, 0.0004, 36.5, "kid")]
    tied = _tied(records, "kid")
    assert tied == {"trials": ["trial_0000", "trial_0001"], "noise": "KID std over subsets", "z": 2.0}
    by_fid = _tied([_record(r.trial_id, r.best["kid"], r.best["kid_std"], r.best["fid"], "fid") for r in records], "fid")
    assert by_fid["trials"] == ["trial_0000"] and by_fid["noise"] is None and "carry no std" in by_fid["why"]

    summary = {"trials": [{"trial_id": r.trial_id, "best_value": r.best_value} for r in reversed(records)],
               "tied": tied}
    assert [t["trial_id"] for t in continued_trials(summary, None)] == ["trial_0000", "trial_0001"]
    assert [t["trial_id"] for t in continued_trials(summary, 3)] == ["trial_0000", "trial_0001", "trial_0002"]
    no_ties = {**summary, "tied": by_fid}  # an FID sweep, or a summary written before ties: the best 3
    assert len(continued_trials(no_ties, None)) == 3 and len(continued_trials({**summary, "tied": None}, None)) == 3
