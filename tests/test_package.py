"""The package as users meet it: its imports and its command line."""

import subprocess
import sys
from pathlib import Path

FORBIDDEN = ("ray", "mlflow", "optuna", "boto3")


def run(*args):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120)


def test_fpa_core_never_imports_the_sweep_stack():
    code = (
        "import importlib, pkgutil, sys, fpa_core\n"
        "for m in pkgutil.walk_packages(fpa_core.__path__, 'fpa_core.'):\n"
        "    importlib.import_module(m.name)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "print(len(list(pkgutil.walk_packages(fpa_core.__path__))), bad)\n"
        "assert not bad, bad\n"
    )
    result = run("-c", code)
    assert result.returncode == 0, result.stderr


def test_model_cli_prints_the_parts_and_the_count():
    result = run("-m", "fpa_core.model", "--preset", "metfaces")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for part in ("input_generator", "latent_to_init", "sequence_processor", "update_net"):
        assert part in out
    assert "219,771,267" in out and "Table 3 (Gen. Param. Count): 220 M" in out
    assert result.stderr == ""


def test_model_cli_rejects_bad_input_with_exit_code_2():
    result = run("-m", "fpa_core.model", "--preset", "ffhq")
    assert result.returncode == 2 and "invalid choice: 'ffhq'" in result.stderr
    result = run("-m", "fpa_core.model", "--set", "d_hidden=0", "--set", "rule=hebb")
    assert result.returncode == 2
    assert "d_hidden: must be a positive integer" in result.stderr and "rule: 'hebb' is not allowed" in result.stderr


def test_the_status_command_loads_neither_torch_nor_mlflow_nor_ray(tmp_path):
    """`sweeps/status.py` reads records and studies: it starts in a fraction of a second, not the seconds that
    torch, MLflow and Ray take to import (Ray only where --address asks a job server)."""
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['sweeps/status.py', '--storage', {str(tmp_path)!r}, '--json']\n"
        "try:\n"
        "    runpy.run_path('sweeps/status.py', run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'mlflow', 'ray', 'torchvision'))\n"
        "assert not heavy, heavy[:5]\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parent.parent)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
