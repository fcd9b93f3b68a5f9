"""Fast Weight Painters (Irie & Schmidhuber, ICLR 2023): images painted by synaptic learning rules.

This package needs only PyTorch, NumPy, SciPy, Pillow and PyYAML (and pytorch-fid where FID is
computed); it never imports Ray, MLflow or Optuna.
"""

import importlib

__version__ = "0.1.0"

# Names are imported on first use, so that ``python -m fpa_core.model`` runs its module only once.
_EXPORTS = {
    "ConfigError": "fpa_core.config",
    "FPAGenerator": "fpa_core.model",
    "ModelConfig": "fpa_core.model_config",
    "Painting": "fpa_core.model",
    "PRESETS": "fpa_core.presets",
    "RULES": "fpa_core.rules",
    "apply_rule": "fpa_core.rules",
}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fpa_core' has no attribute {name!r}")
