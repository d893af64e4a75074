#!/usr/bin/env bash
# GPU checks, run on a lent GPU machine (Python 3.12 image with torch; no network there).
# Carry .whl/ with the wheels fedlr needs beyond that image (pydantic, pydantic-core,
# annotated-types, typing-inspection, typing-extensions, opacus; cp312 manylinux), e.g.
#   pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl pydantic==2.14.4 ...
# Writes its log to $OUT/gpu_check.log (or ./gpu_check.log).
set -uo pipefail
OUT=${OUT:-.}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, transformers, opacus; print('torch', torch.__version__, 'transformers', transformers.__version__, 'opacus', opacus.__version__)"
  echo "== pytest tests/test_privacy_gpu.py tests/test_methods.py"
  python3 -m pytest -q -p no:cacheprovider tests/test_privacy_gpu.py tests/test_methods.py -rs
  echo "== DP-SGD step cost on the GPU (MiniLM-sized BERT, LoRA r=8 q,v + head, batch 32, seq 64)"
  python3 tests/test_privacy_gpu.py
  echo "== client training on cuda through fedlr's model building (choose_device)"
  python3 benchmarks/gpu_client_step.py
} 2>&1 | tee "$OUT/gpu_check.log"
