"""fpa_core.cache.locked: processes that would compute the same cache entry take turns."""

import multiprocessing
import time

from fpa_core import cache


def _hold(path: str, held: "multiprocessing.synchronize.Event", seconds: float) -> None:
    with cache.locked(path):
        held.set()
        time.sleep(seconds)


def test_a_second_process_waits_for_the_first_to_release_the_entry(tmp_path):
    entry = tmp_path / "fid" / "real.npz"
    context = multiprocessing.get_context("fork")
    held = context.Event()
    holder = context.Process(target=_hold, args=(str(entry), held, 1.0))
    holder.start()
    try:
        assert held.wait(30)
        start = time.monotonic()
        with cache.locked(entry):
            waited = time.monotonic() - start
        assert waited > 0.5, waited  # blocked while the other held it
    finally:
        holder.join(30)
    assert holder.exitcode == 0 and (tmp_path / "fid" / "real.npz.lock").is_file()
