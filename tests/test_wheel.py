"""The wheel is self-contained: installed outside the repository it finds its own sample photos and
shipped checkpoint (frcnn_edu/assets, package data; frcnn_edu/samples.py looks them up).

The slow test builds the wheel from a copy of the working tree (an in-tree build would write
build/ and *.egg-info into the repository, and a stale build/lib can slip removed files into the
wheel), installs it with --no-deps into a fresh venv, and runs the demo and two explorers from a
folder outside the repository. Offline: the fresh venv sees the project venv's packages (torch,
...) through a .pth file. That makes the project venv's site-packages a plain path entry, after the
new venv's own site-packages, so its .pth files (the editable install of frcnn_edu among them) are
not run and the wheel's copy of frcnn_edu is the one imported; the test checks that it is.
"""
import fnmatch
import os
import re
import shutil
import subprocess
import sys
import sysconfig

try:
    import tomllib
except ModuleNotFoundError:   # Python 3.10
    import tomli as tomllib
import venv
from pathlib import Path

import pytest

from frcnn_edu import samples

ROOT = Path(__file__).resolve().parent.parent

# Not copied for the build: version control, environments, caches, build and run outputs.
SKIP = {".git", ".venv", "venv", "build", "dist", "runs", "outputs", "tmp", "__pycache__", ".hypothesis",
        ".mypy_cache", ".ruff_cache", ".pytest_cache", ".ipynb_checkpoints"}


def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_citation_version_matches_pyproject():
    """CITATION.cff repeats the version (the citation format needs it): it must follow pyproject.toml."""
    cff = (ROOT / "CITATION.cff").read_text()
    assert re.search(r"^cff-version: 1\.2\.0$", cff, re.M)
    match = re.search(r"^version: *\"?([^\"\s]+)\"?$", cff, re.M)
    assert match and match.group(1) == _pyproject()["project"]["version"]
    assert "1506.01497" in cff                       # the Faster R-CNN paper is referenced


def test_every_asset_is_package_data():
    """Every file under frcnn_edu/assets matches a [tool.setuptools.package-data] pattern, so it
    travels in the wheel; and the files samples.py points at are there."""
    patterns = _pyproject()["tool"]["setuptools"]["package-data"]["frcnn_edu"]
    package = ROOT / "frcnn_edu"
    files = [p for p in sorted(samples.ASSETS.rglob("*")) if p.is_file() and "__pycache__" not in p.parts]
    assert files
    for path in files:
        relative = path.relative_to(package).as_posix()
        assert any(fnmatch.fnmatchcase(relative, pattern) for pattern in patterns), (
            f"{relative} is not in pyproject.toml's package-data: it would be left out of the wheel")
    assert samples.SHIPPED_CHECKPOINT.is_file() and samples.SAMPLE_DIR.is_dir()
    assert (samples.ASSETS / "README.md").is_file()
    assert samples.ASSETS.parent == Path(samples.__file__).resolve().parent


def _run(command, cwd, env, timeout=300):
    result = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, (
        f"{' '.join(map(str, command))} exited {result.returncode}\n"
        f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}")
    return result.stdout


@pytest.mark.slow
def test_installed_wheel_runs_the_demo_outside_the_repository(tmp_path):
    # 1. the wheel, built from a copy of the working tree (offline: no isolation, no dependencies)
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, symlinks=True,
                    ignore=lambda folder, names: [n for n in names if n in SKIP or n.endswith(".egg-info")])
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
    env.update(MPLBACKEND="Agg", PYTHONNOUSERSITE="1", PIP_NO_INPUT="1", PIP_DISABLE_PIP_VERSION_CHECK="1",
               OMP_NUM_THREADS="1")
    _run([sys.executable, "-m", "pip", "wheel", source, "--no-deps", "--no-build-isolation", "--no-index",
          "-w", tmp_path / "dist"], cwd=tmp_path, env=env)
    wheels = list((tmp_path / "dist").glob("frcnn_edu-*.whl"))
    assert len(wheels) == 1, wheels

    # 2. a fresh venv without the system's packages; the project venv's packages visible through a .pth
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=False, with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    own_site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         cwd=tmp_path, env=env).strip())
    project_site = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (own_site / "_frcnn_edu_test_project_env.pth").write_text("".join(f"{p}\n" for p in sorted(project_site)))
    # --ignore-installed: pip sees the project venv's editable frcnn_edu and must leave it alone
    _run([python, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", "--no-compile",
          wheels[0]], cwd=tmp_path, env=env)

    # 3. from outside the repository: the installed copy, with its own photos and checkpoint
    check = (
        "import sys, frcnn_edu, frcnn_edu.samples as s\n"
        "print(frcnn_edu.__file__); print(s.SHIPPED_CHECKPOINT)\n"
        "assert s.SHIPPED_CHECKPOINT.is_file(), s.SHIPPED_CHECKPOINT\n"
        "assert s.list_sample_images() == ['astronaut', 'camera', 'chelsea', 'coffee', 'rocket']\n"
        "assert s.load_sample_image('astronaut').shape == (3, 512, 512)\n"
        "assert (s.ASSETS / 'README.md').is_file()\n"
    )
    out = _run([python, "-c", check], cwd=tmp_path, env=env)
    package_file, checkpoint = out.split()[:2]
    assert Path(package_file).is_relative_to(env_dir), f"imported {package_file}, not the wheel's copy"
    assert Path(checkpoint).is_relative_to(env_dir)
    assert not Path(package_file).is_relative_to(ROOT)

    out = _run([env_dir / "bin" / "frcnn-edu", "demo", "--num-images", "8", "--num-pictures", "1",
                "--out", tmp_path / "demo", "--device", "cpu", "--quiet"], cwd=tmp_path, env=env)
    assert "mAP" in out, out
    assert f"with {checkpoint} ..." in out, out                 # the wheel's checkpoint, by default
    assert sorted(p.name for p in (tmp_path / "demo").glob("*.png")) == ["anchors_on_photo.png", "demo_00.png"]

    explorers = (
        "import frcnn_edu.widgets as W\n"
        "a = W.anchor_explorer(); assert a.png and a.image.shape[-2:] == (600, 902), a.image.shape\n"
        "p = W.proposal_explorer(); assert p.state['source'] == 'RPN of shapes_tiny.pt, before NMS', p.source\n"
        "print(W.DEFAULT_CHECKPOINT)\n"
    )
    out = _run([python, "-c", explorers], cwd=tmp_path, env=env)
    assert Path(out.split()[-1]) == Path(checkpoint)
