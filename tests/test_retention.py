"""What a sweep keeps: the full state of its best few trials, the generator of the rest (no Ray: the rule, then a
real run folder trimmed)."""

from __future__ import annotations

import pytest

from fpa_core import checkpoint, storage
from fpa_core.train.config import build_config
from fpa_core.train.trainer import Trainer
from sweeps.retention import Retention, to_trim, trim
from sweeps.trials import TrialRecord


def _record(number: int, state: str, kid: float | None) -> TrialRecord:
    record = TrialRecord(f"trial_{number:04d}", number, f"run{number}", {}, build_config({}), "kid", state=state)
    if kid is not None:
        record.evaluations = [{"step": 3, "kid": kid}]
    return record


def test_the_ended_trials_outside_the_best_k_are_trimmed_running_ones_count_but_stay():
    records = [_record(0, "COMPLETE", 0.05), _record(1, "PRUNED", 0.30), _record(2, "RUNNING", 0.01),
               _record(3, "COMPLETE", 0.02), _record(4, "ERROR", None)]
    assert [r.trial_id for r in to_trim(records, keep=2)] == ["trial_0000", "trial_0001", "trial_0004"]
    assert [r.trial_id for r in to_trim(records, keep=3)] == ["trial_0001", "trial_0004"]  # 2 running, 3 and 0 kept
    records[1].trimmed = True
    assert [r.trial_id for r in to_trim(records, keep=3)] == ["trial_0004"]  # trimmed once
    assert to_trim(records, keep=9) == [records[4]]  # a trial without an evaluation has nothing to keep whole


@pytest.fixture
def run_folder(tmp_path, image_folder):
    config = build_config({}, {
        "model": {"d_latent": 8, "d_in": 2, "d_in_proj": 8, "d_hidden": 16, "num_layers": 1, "height": 16,
                  "width": 16, "steps": 4},
        "discriminator": {"fmap_max": 16, "attn_res_layers": [], "small_head_attention": False},
        "data": {"dataset": str(image_folder), "resolution": 16}, "optim": {"batch_size": 4},
        "fid": {"every": 2, "num_images": 8, "dims": 64, "backbone": "inception-random"},
        "checkpoint": {"every": 2, "keep": 2}, "pictures": {"samples": 4, "paintings": 1}, "steps": 4,
        "device": "cpu"})
    out = str(tmp_path / "trials" / "trial_0001")
    Trainer(config, out).train()
    return out


def test_a_trimmed_run_keeps_a_generator_that_loads_and_no_run_continues_from_it(run_folder, tmp_path):
    folder = storage.join(run_folder, "checkpoints")
    assert storage.list_names(folder) == ["best.pt", "latest-00000002.pt", "latest-00000004.pt"]
    full = checkpoint.load(storage.join(folder, "best.pt"))
    freed = trim(run_folder)
    assert storage.list_names(folder) == ["best.pt"] and freed > 0
    kept = checkpoint.load(storage.join(folder, "best.pt"))
    assert kept["trimmed"] and kept["evaluations"] == full["evaluations"] and kept["step"] == full["step"]
    assert all(kept["generator_ema"][k].equal(v) for k, v in full["generator_ema"].items())
    assert checkpoint.load_generator(storage.join(folder, "best.pt")) is not None  # it paints and promotes
    assert trim(run_folder) == 0  # once
    with pytest.raises(ValueError, match="trimmed by its sweep"):
        Trainer.resume(run_folder, {"steps": 6})
    with pytest.raises(ValueError, match="holds only a generator"):
        Trainer.from_checkpoint(storage.join(folder, "best.pt"), str(tmp_path / "continued"), {"steps": 6})


def test_retention_trims_in_its_own_thread_and_finish_waits(run_folder, tmp_path):
    retention = Retention(str(tmp_path), keep=0)
    record = _record(1, "COMPLETE", 0.1)
    retention.apply([record])
    retention.finish([record])
    assert record.trimmed and storage.list_names(storage.join(run_folder, "checkpoints")) == ["best.pt"]
