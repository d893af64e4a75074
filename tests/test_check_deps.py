"""scripts/check_deps.py (CI's dependency check): it finds a dependency installed outside its
range and an import no declared distribution provides, and pyproject declares what fedlr and its
tests import."""

import importlib.util
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("check_deps", ROOT / "scripts" / "check_deps.py")
check_deps = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_deps)


def test_a_dependency_outside_its_range_or_missing_is_reported():
    assert check_deps.version_problems([Requirement("pytest>=8")]) == []
    [outside] = check_deps.version_problems([Requirement("pytest<1")])
    assert "outside the declared range" in outside
    [missing] = check_deps.version_problems([Requirement("fedlr-no-such-distribution>=1")])
    assert "not installed" in missing
    assert check_deps.version_problems([Requirement('pytest<1; python_version < "3"')]) == []  # marker not met


def test_an_undeclared_import_is_reported(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text("import os\nimport psutil\nfrom . import sibling\nimport pkg.mod\n")
    imports = check_deps.imported_modules(tmp_path, ("pkg",))
    assert set(imports) == {"os", "psutil", "pkg"} and imports["psutil"] == "pkg/mod.py:2"
    [problem] = check_deps.undeclared_imports(imports, {"torch"}, local={"pkg"})
    assert problem.startswith("psutil (imported at pkg/mod.py:2; distribution psutil)")
    assert check_deps.undeclared_imports(imports, {"psutil"}, local={"pkg"}) == []


def test_a_distribution_found_twice_on_the_path_is_named_once(monkeypatch):
    """``import ray`` puts ray/thirdparty_files (a psutil of its own) on sys.path, and
    packages_distributions then lists psutil twice; the message names it once."""
    monkeypatch.setattr(check_deps.metadata, "packages_distributions", lambda: {"psutil": ["psutil", "psutil"]})
    [problem] = check_deps.undeclared_imports({"psutil": "pkg/mod.py:2"}, {"torch"}, local=set())
    assert problem == "psutil (imported at pkg/mod.py:2; distribution psutil) is not declared in pyproject.toml"


def test_a_requested_extra_declares_what_it_adds():
    declared = check_deps.declared_distributions([Requirement("flwr[simulation]")])
    assert {"flwr", "ray"} <= declared


def test_pyproject_declares_every_import_and_the_experiments():
    """(Whether what is installed fits the declared ranges depends on the environment: CI's step.)"""
    requirements = [*check_deps.declared_requirements(ROOT / "pyproject.toml"),
                    *check_deps.file_requirements(ROOT / "requirements-nodeps.txt")]
    imports = check_deps.imported_modules(ROOT, check_deps.SCANNED)
    assert {"psutil", "cryptography", "hypothesis"} <= set(imports)
    declared = check_deps.declared_distributions(requirements)
    assert check_deps.undeclared_imports(imports, declared, check_deps.local_modules(ROOT)) == []
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["package-dir"]["fedlr.experiments"] == "experiments"
    assert setuptools["package-data"]["fedlr.experiments"] == ["*.toml"]
