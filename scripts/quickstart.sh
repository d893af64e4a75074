#!/usr/bin/env bash
# Set everything up, show the communication plan, and run experiments/quickstart.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/fedlr plan experiments/quickstart.toml
.venv/bin/fedlr run experiments/quickstart.toml "$@"
