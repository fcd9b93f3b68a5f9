#!/usr/bin/env bash
# On a machine with one CUDA GPU and PyTorch (no Ray, MLflow or Optuna needed; pytorch-fid may come
# as a wheel): the fpa_core tests on CUDA, then generator and training speed. Writes $OUT/gpu_report.json.
#   bash benchmarks/gpu_check.sh            (about 5 minutes on an H100-class GPU)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-.}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print(torch.cuda.get_device_name())"
python -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_rules.py tests/test_model.py \
    tests/test_discriminator.py tests/test_losses.py tests/test_checkpoint.py 2>&1 | tee "$OUT/gpu_tests.log"
python benchmarks/gpu_check.py --out "$OUT/gpu_report.json"
