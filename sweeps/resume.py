"""The old name of sweeps/continue_best.py (continue a finished sweep's best trials), kept for one release."""

import runpy
from pathlib import Path

if __name__ == "__main__":
    runpy.run_path(str(Path(__file__).with_name("continue_best.py")), run_name="__main__")
