"""The benchmark scripts are not run by `make test` (they take minutes), but they must not rot:
each one imports against the current package, and the runnable ones have a `main` (bench/curves.py
once imported a name the training refactor had removed and failed on its first line)."""
import importlib
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
SCRIPTS = sorted(p.stem for p in BENCH.glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("name", SCRIPTS)
def test_bench_module_imports_and_runnable_ones_have_main(name):
    module = importlib.import_module(f"bench.{name}")
    if 'if __name__ == "__main__":' in (BENCH / f"{name}.py").read_text():
        assert callable(getattr(module, "main", None)), f"bench/{name}.py runs as a script but has no main()"
