"""Why a run stops. Each of these fails the same way on a retry, so a sweep records it and does not retry."""

from __future__ import annotations


class CannotTrainError(ValueError):
    """The run cannot start as configured: no bfloat16 on this GPU, no CUDA, fewer than 2 images, a dataset
    that changed since the checkpoint, a base generator that is itself a U-Net or paints another size."""


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or infinite; the run stopped before writing anything from that step."""


class RunExistsError(RuntimeError):
    """The output folder already holds a run and the caller did not ask to resume it."""
