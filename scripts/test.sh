#!/usr/bin/env bash
# Set everything up and run the whole test suite (CI runs exactly this).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/chromium.sh
exec .venv/bin/python -m pytest "$@"
