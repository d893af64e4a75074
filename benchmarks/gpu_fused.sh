#!/usr/bin/env bash
# Fused clients on a lent GPU machine (Python 3.12 image with torch and transformers; no network,
# no flwr/ray). Carry .whl/ (see gpu_check.sh). Prints and copies benchmarks/gpu_fused.txt to $OUT.
set -uo pipefail
OUT=${OUT:-.}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv
python3 -m pytest -q -p no:cacheprovider tests/test_fused.py -k "not full" 2>&1 | tail -2
python3 benchmarks/fused_speedup.py --model tiny-random-bert --device cuda --clients 4 16 64 --steps 10 --reps 5 --out gpu_fused
cp benchmarks/gpu_fused.txt "$OUT/"
