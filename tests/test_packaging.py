"""The two install routes (pip's pyproject.toml and conda's environment.yml) must agree."""
import importlib
import re
import shutil
import subprocess
import sys

try:
    import tomllib
except ModuleNotFoundError:   # Python 3.10
    import tomli as tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# conda-forge names the PyTorch package `pytorch`; everything else has the same name.
CONDA_TO_PYPI = {"pytorch": "torch"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def pyproject_packages() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {_name(r) for r in project["dependencies"]}
    names |= {_name(r) for r in project["optional-dependencies"]["dev"]}
    return names


def conda_packages() -> tuple[set[str], list[str]]:
    """Parse the small YAML subset environment.yml uses (no YAML library needed)."""
    conda, pip = set(), []
    in_deps = in_pip = False
    for line in (ROOT / "environment.yml").read_text().splitlines():
        text = line.split("#", 1)[0].rstrip()
        if not text:
            continue
        if not line.startswith(" "):
            in_deps = text.startswith("dependencies:")
            in_pip = False
            continue
        if not in_deps:
            continue
        item = text.strip().removeprefix("- ").strip()
        if item == "pip:":
            in_pip = True
        elif in_pip and line.startswith("      "):
            pip.append(item)
        else:
            in_pip = False
            name = _name(item)
            if name not in ("python", "pip"):
                conda.add(CONDA_TO_PYPI.get(name, name))
    return conda, pip


def test_environment_yml_matches_pyproject():
    conda, _ = conda_packages()
    pip = pyproject_packages()
    assert conda == pip, (
        f"only in environment.yml: {sorted(conda - pip)}; only in pyproject.toml: {sorted(pip - conda)}"
    )


def test_environment_yml_installs_the_package_editable_with_dev_extra():
    _, pip = conda_packages()
    assert "-e .[dev]" in pip


def test_console_script_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["frcnn-edu"] == "frcnn_edu.cli:main"
    # ... and the entry point resolves to the CLI's main function
    from frcnn_edu.cli import main

    module, _, attribute = project["scripts"]["frcnn-edu"].partition(":")
    assert getattr(importlib.import_module(module), attribute) is main


def test_version_has_one_source():
    """pyproject.toml's `version` is the only place the version is written: frcnn_edu.__version__
    reads it from the installed package's metadata. A mismatch means the environment was installed
    from an older pyproject.toml: re-run `pip install -e '.[dev]'` (or any `make` target)."""
    import frcnn_edu

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project.get("dynamic", [])
    assert frcnn_edu.__version__ == project["version"]
    init = (ROOT / "frcnn_edu" / "__init__.py").read_text()
    assert project["version"] not in init, "frcnn_edu/__init__.py must not hard-code the version"


def declared_pythons() -> list[str]:
    """The 3.x versions pyproject.toml's classifiers declare, e.g. ["3.10", "3.11", ...]."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    prefix = "Programming Language :: Python :: "
    return [c.removeprefix(prefix) for c in project["classifiers"]
            if c.startswith(prefix + "3.")]


def test_requires_python_matches_the_oldest_declared_version():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    versions = declared_pythons()
    oldest = min(versions, key=lambda v: tuple(map(int, v.split("."))))
    assert project["requires-python"] == f">={oldest}", (project["requires-python"], versions)
    ruff = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["ruff"]
    assert ruff["target-version"] == "py" + oldest.replace(".", "")


def _interpreter(version: str) -> str | None:
    """This interpreter when it is 3.X, else python3.X on PATH or pyenv's copy (the development
    machines keep 3.6–3.13 there); None when the machine has no 3.X."""
    if version == f"{sys.version_info.major}.{sys.version_info.minor}":
        return sys.executable
    found = shutil.which(f"python{version}")
    if found and subprocess.run([found, "-c", ""], capture_output=True).returncode == 0:
        return found
    pyenv = sorted(Path("/root/.pyenv/versions").glob(f"{version}.*/bin/python"))
    return str(pyenv[-1]) if pyenv else None


@pytest.mark.parametrize("version", declared_pythons())
def test_every_source_file_compiles_on_each_declared_python(version, tmp_path):
    """Syntax check only (torch for other Pythons is not on this machine's disk): a 3.11-only
    construct in the package, tests or tools fails here under 3.10."""
    python = _interpreter(version)
    if python is None:
        pytest.skip(f"no Python {version} interpreter on this machine (the one running the tests is checked)")
    files = [str(p) for folder in ("frcnn_edu", "tests", "bench", "tools") for p in (ROOT / folder).rglob("*.py")]
    script = ("import sys, py_compile\n"
              "for f in sys.argv[1:]:\n"
              "    py_compile.compile(f, cfile=sys.argv[0] + '.pyc', doraise=True)\n")
    (tmp_path / "check.py").write_text(script)
    result = subprocess.run([python, str(tmp_path / "check.py"), *files], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
