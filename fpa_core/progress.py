"""A dependency-free progress line for command lines: one updating line on a terminal, periodic lines in logs."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, start: int = 0, stream=None, log_interval_s: float = 30.0):
        self.total, self.start = total, start
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.log_interval_s = log_interval_s
        self.t0 = self.last_print = time.monotonic()

    def update(self, step: int, fields: dict[str, str]) -> None:
        now = time.monotonic()
        if not self.tty and now - self.last_print < self.log_interval_s and step < self.total:
            return
        self.last_print = now
        rate = (step - self.start) / max(now - self.t0, 1e-9)
        left = (self.total - step) / rate if rate > 0 else float("inf")
        pct = 100.0 * step / max(self.total, 1)
        text = f"step {step}/{self.total} ({pct:3.0f}%) " + " ".join(f"{k} {v}" for k, v in fields.items())
        text += f" | {format_duration(left)} left"
        self.stream.write(f"\r\033[K{text}" if self.tty else f"{text}\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def format_duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"
