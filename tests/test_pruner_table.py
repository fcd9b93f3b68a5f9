"""The pruner table's in-process replay decides as the real driver does (benchmarks/pruner_table.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parent.parent


def _table():
    spec = importlib.util.spec_from_file_location("pruner_table", ROOT / "benchmarks" / "pruner_table.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["pruner_table"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_a_replayed_sweep_prunes_the_same_trials_at_the_same_steps_as_the_real_driver(tmp_path, local_ray):
    from sweeps.simulation import MODEL, CurveModel
    from sweeps.sweep_file import load_sweep

    table = _table()
    spec = load_sweep("digits", "demo").with_fixed({"fid": {"metric": "kid", "every": 250}})
    configs = table.draw(spec, 10, seed=3)
    assert configs[0] == spec.first_params() and len({str(c) for c in configs}) > 5
    pruner = table.Pruner.parse("successive-halving")
    # One trial at a time: each decision sees the same finished trials in both, whatever the clock.
    replayed = table.replay(spec, configs, pruner, CurveModel.packaged(3), concurrency=1, eval_steps=0, seed=3)
    real = table.through_driver(spec, configs, pruner, MODEL, concurrency=1, seed=3, out=tmp_path)
    assert "PRUNED" in replayed["states"] and "COMPLETE" in replayed["states"]
    assert real == replayed

    scored = table.score(replayed, table.replay(spec, configs, table.Pruner("none"), CurveModel.packaged(3), 1, 0, 3),
                         noise=0.0005, eval_steps=0)
    assert scored["fewer_steps"] > 1 and scored["regret"] >= 0
    with pytest.raises(ValueError, match="options are warmup=W, rf=R, patience=P"):
        table.Pruner.parse("median:warm=1")
