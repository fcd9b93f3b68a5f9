"""What a sweep keeps of its trials: the full state of its best few, the generator of the rest.

A MetFaces checkpoint holds 3.66 GB (G, its EMA, D and both Adam states), and each trial keeps
``checkpoint.keep`` latest ones beside its best.pt: a 40-trial sweep would leave hundreds of GB, most of it
of pruned trials nobody continues. So each trial that has ended outside the sweep's best ``--keep-full`` K
(default 3; by its best value of the sweep's metric, running trials counted) is trimmed: its latest
checkpoints are deleted and its best.pt becomes the generator alone (``fpa_core.checkpoint.trimmed``: the EMA
generator, the raw G, the config and every evaluation). A trial that falls out of the K later is trimmed
then (at the next trial's end, and at the sweep's). The K keep everything: ``fpa-continue``, ``fpa-promote``
and ``--stage unet`` work on them as on any run; a trimmed trial still promotes, paints and evaluates, and
``--base`` takes its G, but no run continues from it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor

from fpa_core import checkpoint, storage
from sweeps.sweep import trial_folder
from sweeps.trials import TrialRecord

log = logging.getLogger(__name__)

KEEP_FULL = 3


def to_trim(records: Iterable[TrialRecord], keep: int) -> list[TrialRecord]:
    """The ended trials outside the best ``keep`` (no side effects): every trial with a best value is ranked by
    it, running ones too; a trial without one is outside. Trials trimmed already are left out."""
    records = list(records)
    ranked = sorted((r for r in records if r.best_value is not None), key=lambda r: (r.best_value, r.number))
    kept = {r.trial_id for r in ranked[:keep]}
    return [r for r in records if r.state != "RUNNING" and not r.trimmed and r.trial_id not in kept]


class Retention:
    """Trims a sweep's trials as they end, in a thread of its own (a MetFaces best.pt takes a while to rewrite,
    and Ray Tune's loop should not wait for it): ``TrialBook`` calls ``apply`` after each trial's end and
    ``finish`` at the sweep's, which waits for every trim."""

    def __init__(self, sweep_folder: str, keep: int = KEEP_FULL):
        self.sweep_folder, self.keep = sweep_folder, keep
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fpa-retention")
        self._pending: list[Future] = []

    def apply(self, records: Iterable[TrialRecord]) -> None:
        for record in to_trim(records, self.keep):
            record.trimmed = True  # decided here, done by the worker; a driver that dies midway is redone on resume
            self._pending.append(self._worker.submit(self._trim, record.trial_id))

    def finish(self, records: Iterable[TrialRecord]) -> None:
        """The last trims, and a sweep of the trimmed folders for a checkpoint that a stopping trial wrote late."""
        records = list(records)
        self.apply(records)
        for record in records:
            if record.trimmed:
                self._pending.append(self._worker.submit(self._trim, record.trial_id))
        for future in self._pending:
            future.result()
        self._pending.clear()

    def _trim(self, trial_id: str) -> None:
        try:
            freed = trim(trial_folder(self.sweep_folder, trial_id))
        except Exception as e:  # noqa: BLE001 - a storage that failed: the files stay, the sweep goes on
            log.warning("could not trim %s (%s: %s); its checkpoints stay", trial_id, type(e).__name__, e)
            return
        if freed:
            log.info("%s ended outside the best %d: kept its generator, freed %.3g GB", trial_id, self.keep,
                     freed / 1e9)


def trim(folder: str) -> int:
    """Delete a run folder's latest checkpoints and make its best.pt the generator alone; the bytes freed."""
    folder = storage.join(folder, "checkpoints")
    before = storage.size(folder)
    best = storage.join(folder, "best.pt")
    if storage.exists(best):
        state = checkpoint.load(best)
        if not state.get("trimmed"):
            checkpoint.save(best, checkpoint.trimmed(state))
    for _, uri in checkpoint.latest_checkpoints(folder):
        storage.remove(uri)
    return before - storage.size(folder)
