"""Small linear algebra on one CPU thread.

LAPACK's factorisations and eigensolvers synchronise their threads at every step, and when other
processes keep the cores busy each wait costs a scheduler time slice. On this project's 2-core machine,
under load, a 256 x 256 ``eigvalsh`` took 2.8 s on two threads and 5 ms on one, and ``solve_triangular``
on (60, 64, 64) took 472 ms on two and 0.68 ms on one. Work that small gains nothing from a second
thread, so it runs on one.
"""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def one_cpu_thread():
    """torch's CPU ops on one thread for the duration (a no-op where torch already uses one)."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
