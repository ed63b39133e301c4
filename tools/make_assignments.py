"""Build the six exercises as an nbgrader course: `make assignments`.

    python tools/make_assignments.py [--course-dir DIR]     (default: build/assignments)

From notebooks/exercises/exNN_*.ipynb and the worked solutions in notebooks/exercises/solutions/
it writes, for each exercise, the instructor's version `DIR/source/exNN/exNN.ipynb`:

  - each answer cell (the `def my_...: raise NotImplementedError  # your code here` cell) keeps its
    `def` line and docstring and gets the solution's body between `### BEGIN SOLUTION` and
    `### END SOLUTION` (an autograded answer cell);
  - each checker cell becomes a locked autograder test cell with points that calls the checker in
    grading mode, `fe.exercises.check_...(my_..., raise_on_failure=True)`: silent on success,
    AssertionError with the explanation on failure, and a function that calls the package's own
    answer fails;
  - the "Stuck?" cell no longer points at the worked solutions;

plus `DIR/nbgrader_config.py`. Then `nbgrader generate_assignment` writes the student versions,
without the solutions, to `DIR/release/exNN/exNN.ipynb` (and records the assignments in
`DIR/gradebook.db`). Submissions, autograding and the gradebook stay where nbgrader keeps them
(`DIR/submitted/<student>/exNN/`, `DIR/autograded/`); re-running this script regenerates `source/`
and `release/` and leaves them alone.

nbgrader runs as a subprocess of this virtual environment, with its bin folder on PATH (nbgrader
calls `alembic` by name) and Jupyter's config, data and runtime folders (and IPython's) pointed
into the course folder, so nothing reads or writes the user's ~/.jupyter. Nothing is downloaded.
"""
from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXERCISES = ROOT / "notebooks" / "exercises"
SOLUTIONS = EXERCISES / "solutions"
DEFAULT_COURSE_DIR = ROOT / "build" / "assignments"
COURSE_ID = "frcnn_edu"

STUB = "    raise NotImplementedError  # your code here"    # the last line of every answer cell
CHECK_CALL = re.compile(r"(fe\.exercises\.check_\w+\((\w+).*)\)\s*")   # group 2: the function checked
POINTS = 10            # per test cell; ex06's batched bonus gets BONUS_POINTS
BONUS_POINTS = 5
BONUS_FUNCTIONS = {"my_roi_pool_batch"}
# "The worked solution(s) ... in a new cell." in the "Stuck?" cell: not for graded work.
SOLUTION_LINK = re.compile(r"The worked solutions?\b.*?in a new cell\.\s*", re.DOTALL)

NBGRADER_CONFIG = '''\
"""nbgrader configuration of the frcnn_edu exercises (written by tools/make_assignments.py).

Run nbgrader from this folder: it is the course root (source/, release/, submitted/,
autograded/, feedback/ and gradebook.db live here).
"""
c = get_config()  # noqa: F821  (nbgrader provides it)
c.CourseDirectory.course_id = "{course_id}"
# Each cell runs one checker (well under a second) or draws a figure or an explorer.
c.Execute.timeout = 120
'''


# ---------------------------------------------------------------------------------------------
# The solutions: the body of each answer function, ready to go into the notebook
# ---------------------------------------------------------------------------------------------
def solution_bodies(solution: Path, setup_code: str) -> dict[str, str]:
    """{function name: its body as notebook code} for every function of a solution module.

    The body is the function's code after its docstring, indented by 4 spaces. What it needs from
    the module goes inside the body, so that the student's version (the stub) gives nothing away:
    imports the notebook's setup cell (setup_code) lacks become local imports, and the module's
    helper functions (e.g. round_half_away_from_zero in ex06) become nested functions.
    """
    text = solution.read_text()
    lines = text.splitlines()
    tree = ast.parse(text)
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    imports = {alias.asname or alias.name.partition(".")[0]: ast.get_source_segment(text, node)
               for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom) for alias in node.names}

    bodies = {}
    for name, node in functions.items():
        # Module functions this one calls, in file order; another answer function (ex06's batch
        # version calls my_roi_pool) is the student's own, defined in its own cell.
        helpers = [functions[h] for h in functions if h in _names_used(node) and h != name and not h.startswith("my_")]
        used = _names_used(node).union(*map(_names_used, helpers))
        prelude = sorted({imports[n] for n in used if n in imports and imports[n] not in setup_code})
        for helper in helpers:
            prelude += lines[helper.lineno - 1:helper.end_lineno]
        start = node.body[0].end_lineno if ast.get_docstring(node) is not None else node.body[0].lineno - 1
        body = "\n".join(lines[start:node.end_lineno])
        bodies[name] = (textwrap.indent("\n".join(prelude), "    ") + "\n\n" if prelude else "") + body
    return bodies


def _names_used(node: ast.AST) -> set[str]:
    """The plain names a function's code reads (calls, variables, modules)."""
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


# ---------------------------------------------------------------------------------------------
# The cells of the instructor's version
# ---------------------------------------------------------------------------------------------
def nbgrader_metadata(grade_id: str, *, solution: bool = False, grade: bool = False, locked: bool = False,
                      points: int | None = None) -> dict:
    """The cell metadata nbgrader reads (schema 3): an answer cell is `solution`, an autograder
    test cell is `grade` + `locked` with `points`."""
    meta = {"grade": grade, "grade_id": grade_id, "locked": locked, "schema_version": 3,
            "solution": solution, "task": False}
    if points is not None:
        meta["points"] = points
    return meta


def function_name(source: str) -> str:
    """The name in the first `def name(` of a cell."""
    match = re.search(r"^def (\w+)\(", source, re.MULTILINE)
    if match is None:
        raise ValueError(f"no function definition in the answer cell:\n{source}")
    return match.group(1)


def answer_cell(cell: dict, bodies: dict[str, str]) -> dict:
    """The stub `def my_x(...): \"\"\"...\"\"\" raise NotImplementedError` with the solution's body
    between the solution markers instead of the raise."""
    source = "".join(cell["source"])
    name = function_name(source)
    solved = source.replace(STUB, f"    ### BEGIN SOLUTION\n{bodies[name]}\n    ### END SOLUTION")
    out = copy.deepcopy(cell)
    out["source"] = solved
    out["metadata"]["nbgrader"] = nbgrader_metadata(name, solution=True)
    return out


def test_cell(cell: dict) -> dict:
    """The learning-mode checker call `fe.exercises.check_x(my_x, ...)` as a locked, autograded
    test cell in grading mode."""
    match = CHECK_CALL.fullmatch("".join(cell["source"]))
    if match is None:
        raise ValueError(f"not a checker call: {''.join(cell['source'])!r}")
    checked = match.group(2)
    out = copy.deepcopy(cell)
    out["source"] = f"{match.group(1)}, raise_on_failure=True)"
    points = BONUS_POINTS if checked in BONUS_FUNCTIONS else POINTS
    out["metadata"]["nbgrader"] = nbgrader_metadata(f"test_{checked}", grade=True, locked=True, points=points)
    return out


def without_solution_link(cell: dict) -> dict:
    """The "Stuck?" cell without its pointer to the worked solution (students of a graded
    assignment do not get the solutions folder)."""
    out = copy.deepcopy(cell)
    out["source"] = SOLUTION_LINK.sub("", "".join(cell["source"]))
    return out


def source_notebook(exercise: Path) -> dict:
    """The instructor's version of one exercise notebook: solutions in, checkers in grading mode."""
    notebook = json.loads(exercise.read_text())
    code = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    setup_code = "".join(code[0]["source"])
    bodies = solution_bodies(SOLUTIONS / f"{exercise.stem}.py", setup_code)
    cells = []
    for cell in notebook["cells"]:
        source = "".join(cell["source"])
        if cell["cell_type"] == "code" and source.rstrip().endswith(STUB.strip()):
            cells.append(answer_cell(cell, bodies))
        elif cell["cell_type"] == "code" and source.startswith("fe.exercises.check_"):
            cells.append(test_cell(cell))
        elif cell["cell_type"] == "markdown" and "solutions/" in source:
            cells.append(without_solution_link(cell))
        else:
            cells.append(copy.deepcopy(cell))
    check_source_notebook(exercise, cells)
    return {**notebook, "cells": cells}


def check_source_notebook(exercise: Path, cells: list[dict]) -> None:
    """Fail loudly when an exercise's text changed so that a rule above no longer finds its cells."""
    kinds = [cell.get("metadata", {}).get("nbgrader", {}) for cell in cells]
    answers = sum(kind.get("solution", False) for kind in kinds)
    tests = sum(kind.get("grade", False) for kind in kinds)
    if answers == 0 or tests != answers:
        raise ValueError(f"{exercise.name}: found {answers} answer cells and {tests} checker cells")
    leftover = [c for c in cells if "solutions/" in "".join(c["source"]) or STUB in "".join(c["source"])]
    if leftover:
        raise ValueError(f"{exercise.name}: a cell still shows a stub or a solutions/ link:\n{leftover[0]}")


# ---------------------------------------------------------------------------------------------
# The course folder and nbgrader
# ---------------------------------------------------------------------------------------------
ASSIGNMENT_GLOB = "ex[0-9][0-9]"     # what assignment_id returns


def assignment_id(exercise: Path) -> str:
    """ex01_iou.ipynb -> ex01."""
    return exercise.stem.split("_")[0]


def exercises() -> list[Path]:
    return sorted(EXERCISES.glob("ex[0-9][0-9]_*.ipynb"))


def write_notebook(notebook: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(notebook, f, indent=1, ensure_ascii=False, sort_keys=True)
        f.write("\n")


def write_source(course_dir: Path) -> list[str]:
    """source/exNN/exNN.ipynb for every exercise and nbgrader_config.py; returns the assignment ids."""
    ids = []
    for exercise in exercises():
        ids.append(assignment_id(exercise))
        write_notebook(source_notebook(exercise), course_dir / "source" / ids[-1] / f"{ids[-1]}.ipynb")
    (course_dir / "nbgrader_config.py").write_text(NBGRADER_CONFIG.format(course_id=COURSE_ID))
    return ids


def nbgrader_env(course_dir: Path) -> dict[str, str]:
    """The environment nbgrader runs in: this venv's bin first on PATH (nbgrader runs `alembic`
    and starts kernels by name), Jupyter's and IPython's folders inside the course folder."""
    private = course_dir / ".jupyter"
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(JUPYTER_CONFIG_DIR=str(private / "config"), JUPYTER_DATA_DIR=str(private / "data"),
               JUPYTER_RUNTIME_DIR=str(private / "runtime"), IPYTHONDIR=str(private / "ipython"),
               JUPYTER_PLATFORM_DIRS="0", PYDEVD_DISABLE_FILE_VALIDATION="1")
    return env


def run_nbgrader(course_dir: Path, *args: str) -> subprocess.CompletedProcess:
    """`nbgrader ARGS` in the course folder; raises with nbgrader's log when it fails."""
    command = [str(Path(sys.executable).parent / "nbgrader"), *args]
    done = subprocess.run(command, cwd=course_dir, env=nbgrader_env(course_dir), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


def build(course_dir: Path = DEFAULT_COURSE_DIR) -> list[str]:
    """Write source/ and nbgrader_config.py, then generate release/. Returns the assignment ids."""
    course_dir = Path(course_dir).expanduser().resolve()
    course_dir.mkdir(parents=True, exist_ok=True)
    ids = write_source(course_dir)
    # One nbgrader process for all of them (a glob as the assignment id): its start-up alone takes
    # 5-15 s on a loaded 2-core machine. --force replaces an existing release/exNN.
    run_nbgrader(course_dir, "generate_assignment", ASSIGNMENT_GLOB, "--force")
    return ids


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--course-dir", type=Path, default=DEFAULT_COURSE_DIR,
                        help=f"the nbgrader course folder (default: {DEFAULT_COURSE_DIR.relative_to(ROOT)})")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    ids = build(args.course_dir)
    course = args.course_dir.expanduser().resolve()
    print(f"{len(ids)} assignments ({', '.join(ids)}) in {time.perf_counter() - start:.0f} s:\n"
          f"  instructor versions (with solutions): {course / 'source'}\n"
          f"  student versions (no solutions):      {course / 'release'}\n"
          f"Autograde: put submissions in {course / 'submitted'}/<student>/<exNN>/ and run "
          f"`nbgrader autograde exNN` in {course} (with .venv/bin first on PATH); docs/teaching.md.")


if __name__ == "__main__":
    main()
