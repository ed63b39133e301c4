"""Notebooks are committed in one state: outputs stripped (nbval runs them fresh in `make test`)."""
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").rglob("*.ipynb"))
NOTEBOOKS = [p for p in NOTEBOOKS if ".ipynb_checkpoints" not in p.parts]
COURSE = [p for p in NOTEBOOKS if p.parent == ROOT / "notebooks"]


def test_there_is_a_course():
    assert len(COURSE) >= 13, [p.name for p in COURSE]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: str(p.relative_to(ROOT)))
def test_outputs_are_stripped(path):
    notebook = json.loads(path.read_text())
    for index, cell in enumerate(notebook["cells"]):
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [], f"{path.name} cell {index} has outputs: strip them"
            assert cell.get("execution_count") is None, f"{path.name} cell {index} has an execution count"


@pytest.mark.parametrize("path", COURSE, ids=lambda p: p.name)
def test_opens_with_what_it_teaches_and_ends_with_questions(path):
    cells = json.loads(path.read_text())["cells"]
    assert cells[0]["cell_type"] == "markdown", f"{path.name} must open with a markdown introduction"
    last = "".join(cells[-1]["source"]).lower()
    assert cells[-1]["cell_type"] == "markdown" and "question" in last, (
        f"{path.name} must end with a summary and questions to think about")


@pytest.mark.parametrize("path", COURSE, ids=lambda p: p.name)
def test_readme_links_every_notebook(path):
    assert f"notebooks/{path.name}" in (ROOT / "README.md").read_text()
