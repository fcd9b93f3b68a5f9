"""Checkpoints: atomic, weights-only, with every RNG state."""

import pickle
import random

import numpy as np
import pytest
import torch

from fpa_core import checkpoint


def test_round_trip_with_rng_states(tmp_path):
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    state = {"step": 7, "weights": {"w": torch.randn(3)}, "config": {"model": {"d_hidden": 8}},
             "rng": checkpoint.rng_state(), "history": [[5, 1.5]]}
    expected = (random.random(), np.random.rand(), torch.rand(1))
    checkpoint.save(str(tmp_path / "c.pt"), state)
    loaded = checkpoint.load(str(tmp_path / "c.pt"))
    assert loaded["step"] == 7 and loaded["history"] == [[5, 1.5]]
    torch.testing.assert_close(loaded["weights"]["w"], state["weights"]["w"])
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    checkpoint.set_rng_state(loaded["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"format_version": checkpoint.FORMAT_VERSION, "x": Evil()}, path, pickle_module=pickle)
    with pytest.raises(ValueError, match="not a readable FPA checkpoint"):
        checkpoint.load(str(path))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable FPA checkpoint"):
        checkpoint.load(str(tmp_path / "junk.pt"))
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        checkpoint.load(str(tmp_path / "missing.pt"))


def test_latest_checkpoints_are_found_in_order_and_pruned(tmp_path):
    for step in (30, 10, 20):
        checkpoint.save(str(tmp_path / checkpoint.latest_name(step)), {"step": step})
    checkpoint.save(str(tmp_path / "best.pt"), {"step": 10})
    assert [s for s, _ in checkpoint.latest_checkpoints(str(tmp_path))] == [10, 20, 30]
    checkpoint.prune_latest(str(tmp_path), keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "latest-00000020.pt", "latest-00000030.pt"]


def test_a_format_1_checkpoint_loads_with_its_fids_as_evaluations(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"format_version": 1, "step": 6, "fid_history": [[3, 9.5], [6, 7.25]], "best": [7.25, 6]}, path)
    state = checkpoint.load(str(path))
    assert state["format_version"] == checkpoint.FORMAT_VERSION and "fid_history" not in state and "best" not in state
    assert state["evaluations"] == [{"step": 3, "fid": 9.5}, {"step": 6, "fid": 7.25}]
