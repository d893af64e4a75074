"""``strategies/`` and ``clients/`` are installed as ``fedlr.strategies`` and ``fedlr.clients``
(pyproject.toml package-dir): imported under their bare names from the repository root they
refuse with the import to use, instead of loading a second copy of every class."""

import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.parametrize("bare, right", [("strategies.base", "fedlr.strategies"), ("clients.app", "fedlr.clients")])
def test_bare_import_from_the_repository_root_fails_naming_the_installed_name(bare, right):
    done = subprocess.run([sys.executable, "-c", f"import {bare}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: ") and f"import {right}, not {bare.split('.')[0]}" in last


def test_the_installed_names_import_from_the_repository_root():
    code = "import fedlr.strategies, fedlr.clients.app; print(fedlr.strategies.__name__)"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "fedlr.strategies"
