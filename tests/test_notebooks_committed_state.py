"""Notebooks are committed in one state, written by tools/refresh_notebook_outputs.py:

cells tagged `nbval-check-output` (cell metadata "tags") keep their text output (what
`pytest --nbval-lax` compares a fresh run against: without a stored output nbval would check
nothing), every other code cell is stripped. nbval's instructions live in tags, never in comments
in the code learners read.
"""
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").rglob("*.ipynb"))
NOTEBOOKS = [p for p in NOTEBOOKS if ".ipynb_checkpoints" not in p.parts]
COURSE = [p for p in NOTEBOOKS if p.parent == ROOT / "notebooks"]


def test_there_is_a_course():
    assert len(COURSE) >= 13, [p.name for p in COURSE]


TAG = "nbval-check-output"
REFRESH = "run `make notebook-outputs` (tools/refresh_notebook_outputs.py)"


def is_checked(cell) -> bool:
    return cell["cell_type"] == "code" and TAG in cell.get("metadata", {}).get("tags", [])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: str(p.relative_to(ROOT)))
def test_only_checked_cells_keep_their_text_output(path):
    notebook = json.loads(path.read_text())
    for index, cell in enumerate(notebook["cells"]):
        if cell["cell_type"] != "code":
            continue
        where = f"{path.name} cell {index}"
        if is_checked(cell):
            assert cell.get("execution_count") is not None and cell.get("outputs"), (
                f"{where} is tagged {TAG} but has no stored output, so nbval would check nothing: {REFRESH}")
            for output in cell["outputs"]:
                assert output["output_type"] in ("stream", "execute_result"), f"{where}: {output['output_type']}"
                assert set(output.get("data", {})) <= {"text/plain"}, f"{where} stores non-text output"
        else:
            assert cell.get("outputs") == [], f"{where} has outputs: {REFRESH}"
            assert cell.get("execution_count") is None, f"{where} has an execution count: {REFRESH}"


def test_the_check_marks_are_not_toothless():
    """Every course notebook but the training comparison pins some printed numbers."""
    checked = {p.name for p in COURSE if any(is_checked(c) for c in json.loads(p.read_text())["cells"])}
    assert len(checked) >= len(COURSE) - 1, sorted(p.name for p in COURSE if p.name not in checked)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_nbval_comments_in_the_code(path):
    """nbval markers are cell tags (nbval-check-output, nbval-ignore-output, nbval-skip,
    raises-exception), not `# NBVAL_...` comment lines: learners see clean code."""
    notebook = json.loads(path.read_text())
    for index, cell in enumerate(notebook["cells"]):
        assert "NBVAL" not in "".join(cell["source"]), (
            f"{path.name} cell {index}: move the `# NBVAL_...` comment into the cell's metadata tags "
            f"(e.g. {TAG}) and delete the line")


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


APPS = sorted((ROOT / "apps").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS + APPS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_cell_has_a_unique_id(path):
    """nbformat 4.5 gives each cell an id; a cell added by a script without one makes nbformat warn
    (and a future nbformat refuse the notebook), and Jupyter Book / nbgrader key cells by it."""
    notebook = json.loads(path.read_text())
    assert (notebook["nbformat"], notebook["nbformat_minor"]) >= (4, 5)
    ids = [cell.get("id") for cell in notebook["cells"]]
    missing = [index for index, cell_id in enumerate(ids) if not cell_id]
    assert not missing, f"{path.name}: cells {missing} have no id"
    assert len(set(ids)) == len(ids), f"{path.name}: duplicate cell ids"
