"""CI check: what pyproject.toml declares is what is installed and what the code imports.

CI installs the pinned set of requirements.txt (``pip install --no-deps`` for fedlr itself), so
pyproject's ranges are otherwise never exercised. This fails (exit 1) when

1. ``pip check`` finds an installed package whose requirements are broken (except the data
   packages of requirements-nodeps.txt, installed without their dependencies on purpose);
2. a declared dependency (``[project] dependencies``, every optional extra, and the pins of
   requirements-nodeps.txt) is missing or installed at a version outside its range;
3. a third-party module imported by fedlr, its strategies and clients, or its tests belongs to
   no declared distribution (directly, or through a declared extra such as ``flwr[simulation]``).

Usage: ``.venv/bin/python scripts/check_deps.py`` (from any directory).
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("fedlr", "strategies", "clients", "tests")


def declared_requirements(pyproject: Path) -> list[Requirement]:
    """Every requirement of ``[project] dependencies`` and of each optional extra."""
    project = tomllib.loads(pyproject.read_text())["project"]
    extras = project.get("optional-dependencies", {}).values()
    return [Requirement(r) for r in [*project.get("dependencies", []), *(r for group in extras for r in group)]]


def file_requirements(path: Path) -> list[Requirement]:
    """The requirements of a pip requirements file (comments and blank lines skipped)."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [Requirement(line) for line in lines if line]


def version_problems(requirements: list[Requirement]) -> list[str]:
    """A line for each requirement (whose marker applies here) not installed inside its range."""
    problems = []
    for req in requirements:
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            installed = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            problems.append(f"{req}: declared but not installed")
            continue
        if not req.specifier.contains(installed, prereleases=True):
            problems.append(f"{req}: installed {req.name} {installed} is outside the declared range")
    return problems


def declared_distributions(requirements: list[Requirement]) -> set[str]:
    """Canonical names of the declared distributions and of those their requested extras add."""
    names = {canonicalize_name(r.name) for r in requirements}
    for req in requirements:
        for extra in req.extras:
            for dep in metadata.requires(req.name) or []:
                sub = Requirement(dep)
                if sub.marker is not None and sub.marker.evaluate({"extra": extra}):
                    names.add(canonicalize_name(sub.name))
    return names


def imported_modules(root: Path, folders: tuple[str, ...]) -> dict[str, str]:
    """Top-level module name -> the first ``file:line`` that imports it (absolute imports only)."""
    found: dict[str, str] = {}
    for folder in folders:
        for path in sorted((root / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.split(".")[0], f"{path.relative_to(root)}:{node.lineno}")
    return found


def undeclared_imports(imports: dict[str, str], declared: set[str], local: set[str]) -> list[str]:
    """A line for each imported third-party module that no declared distribution provides."""
    providers = metadata.packages_distributions()
    problems = []
    for module, where in sorted(imports.items()):
        if module in sys.stdlib_module_names or module in local:
            continue
        # once each: a distribution also vendored elsewhere on sys.path is listed twice (after
        # `import ray`, psutil from site-packages and from ray/thirdparty_files)
        dists = sorted(set(providers.get(module, [])))
        if not any(canonicalize_name(d) in declared for d in dists):
            by = f"distribution {', '.join(dists)}" if dists else "no installed distribution"
            problems.append(f"{module} (imported at {where}; {by}) is not declared in pyproject.toml")
    return problems


def local_modules(root: Path) -> set[str]:
    """The project's own top-level modules: its packages, and the test and benchmark helpers that
    tests import by path (``conftest``, ``common``)."""
    return {"fedlr", "strategies", "clients", "benchmarks"} | {
        p.stem for folder in ("tests", "benchmarks") for p in (root / folder).glob("*.py")}


def pip_check(exempt: set[str]) -> list[str]:
    """``pip check``'s complaints, but those about a package of ``exempt`` (canonical names)."""
    proc = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    if proc.returncode == 0:
        return []
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return [f"pip check: {line}" for line in lines if canonicalize_name(line.split()[0]) not in exempt]


def main() -> int:
    nodeps = file_requirements(ROOT / "requirements-nodeps.txt")
    requirements = [*declared_requirements(ROOT / "pyproject.toml"), *nodeps]
    problems = [*pip_check({canonicalize_name(r.name) for r in nodeps}), *version_problems(requirements),
                *undeclared_imports(imported_modules(ROOT, SCANNED), declared_distributions(requirements),
                                    local_modules(ROOT))]
    for line in problems:
        print(f"check_deps: {line}", file=sys.stderr)
    if not problems:
        print(f"check_deps: {len(requirements)} declared requirements installed in range; pip check clean; "
              "every third-party import declared")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
