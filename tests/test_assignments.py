"""`make assignments` (tools/make_assignments.py): the six exercises as an nbgrader course.

Generates the course into a temporary folder, checks that the student versions (release/) carry
no line of the worked solutions, then autogrades two students with nbgrader itself, offline, in
one `nbgrader autograde` run over all six exercises:

  - "correct" fills every answer cell with the instructor's solution: full marks;
  - "wrong" fills every answer cell with a call to the package's own answer (right in learning
    mode, not a solution in grading mode) and also edits the locked test cells back to learning
    mode: autograding must restore them and give 0 on every test cell.

nbgrader starts one kernel per notebook (~10 s of CPU each, mostly importing torch), so the tests
that need nbgrader are slow; one fast test checks the instructor's notebooks in this process.
"""
import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = ROOT / "notebooks" / "exercises" / "solutions"
STUDENT_STUB = "    # YOUR CODE HERE\n    raise NotImplementedError()"   # nbgrader's default code stub


def _load_tool():
    spec = importlib.util.spec_from_file_location("make_assignments", ROOT / "tools" / "make_assignments.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_assignments = _load_tool()

# Right answers that only call the package's answer: they pass the checkers in learning mode
# (tests/test_exercises.py) and must fail in grading mode.
DELEGATING = {
    "my_iou": "return fe.boxes.box_iou(boxes1, boxes2)",
    "my_nms": "return fe.boxes.nms(boxes, scores, iou_threshold)",
    "my_anchors": "return fe.anchors.generate_base_anchors(sizes, ratios)",
    "my_encode": "return fe.boxes.encode(boxes, anchors)",
    "my_assign": ("return fe.rpn.assign_anchor_targets(anchors, gt_boxes, image_size, pos_iou=pos_iou, "
                  "neg_iou=neg_iou, sample=False)[0]"),
    "my_roi_pool": ("rois = torch.cat([torch.zeros(1), roi]).reshape(1, 5)\n"
                    "    return fe.roi.roi_pool(features[None], rois, output_size, spatial_scale)[0]"),
    "my_roi_pool_batch": "return fe.roi.roi_pool(features, rois, output_size, spatial_scale)",
}


def test_the_instructor_answers_pass_the_test_cells_in_grading_mode(capsys):
    """source/: each answer cell (solution markers and all) defines a function that its test cell,
    run as written, passes silently; here, without nbgrader or a kernel."""
    for exercise in make_assignments.exercises():
        cells = make_assignments.source_notebook(exercise)["cells"]
        namespace = {}
        exec("import torch\nimport frcnn_edu as fe\nimport frcnn_edu.exercises", namespace)
        for kind in ("solution", "grade"):
            run = [cell["source"] for cell in cells if _nbgrader(cell).get(kind)]
            assert run, (exercise.name, kind)
            for source in run:
                exec(source, namespace)
    assert capsys.readouterr().out == ""


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> tuple[Path, list[str]]:
    pytest.importorskip("nbgrader", reason="nbgrader is not installed (the '.[dev]' extras)")
    course_dir = tmp_path_factory.mktemp("course")
    return course_dir, make_assignments.build(course_dir)


def _notebook(path: Path) -> dict:
    return json.loads(path.read_text())


def _nbgrader(cell: dict) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def _text(notebook: dict) -> str:
    return "\n".join("".join(cell["source"]) for cell in notebook["cells"])


def _solution_lines(solution: Path) -> list[str]:
    """The non-trivial lines of a worked solution's code: no blank lines, comments, docstrings,
    imports or `def` lines (the stub keeps the signature), nothing shorter than 10 characters."""
    text = re.sub(r'""".*?"""', "", solution.read_text(), flags=re.DOTALL)
    lines = [line.split("  #")[0].strip() for line in text.splitlines()]
    return [line for line in lines if len(line) >= 10 and not line.startswith(("#", "import ", "from ", "def "))]


@pytest.mark.slow
def test_the_course_has_every_exercise(course):
    course_dir, ids = course
    assert ids == ["ex01", "ex02", "ex03", "ex04", "ex05", "ex06"]
    assert (course_dir / "nbgrader_config.py").is_file()
    for name in ids:
        for version in ("source", "release"):
            notebook = _notebook(course_dir / version / name / f"{name}.ipynb")
            answers = [c for c in notebook["cells"] if _nbgrader(c).get("solution")]
            tests = [c for c in notebook["cells"] if _nbgrader(c).get("grade")]
            assert answers and len(tests) == len(answers), (version, name)
            for cell in tests:
                assert _nbgrader(cell)["locked"] and _nbgrader(cell)["points"] > 0
                assert "".join(cell["source"]).endswith(", raise_on_failure=True)")
        released = _notebook(course_dir / "release" / name / f"{name}.ipynb")
        for cell in released["cells"]:
            if _nbgrader(cell).get("solution"):
                assert "".join(cell["source"]).endswith(STUDENT_STUB)


@pytest.mark.slow
@pytest.mark.parametrize("exercise", sorted(SOLUTIONS.glob("ex*.py")), ids=lambda p: p.stem)
def test_no_solution_line_reaches_the_students(course, exercise):
    course_dir, _ = course
    name = exercise.stem.split("_")[0]
    source = _text(_notebook(course_dir / "source" / name / f"{name}.ipynb"))
    release = _text(_notebook(course_dir / "release" / name / f"{name}.ipynb"))
    # What the exercise notebook already shows students (a hint may quote a line) is no leak.
    shown = _text(_notebook(ROOT / "notebooks" / "exercises" / f"{exercise.stem}.ipynb"))
    lines = _solution_lines(exercise)
    assert len(lines) >= 5, lines
    assert all(line in source for line in lines), [line for line in lines if line not in source]
    leaked = [line for line in lines if line in release and line not in shown]
    assert leaked == [], f"release/{name} shows solution lines: {leaked}"
    assert "solutions/" not in release and "BEGIN SOLUTION" not in release


def _submission(release: dict, source: dict, answer) -> dict:
    """The release notebook with every answer cell filled in by answer(release cell, source cell)."""
    by_id = {_nbgrader(cell).get("grade_id"): cell for cell in source["cells"]}
    filled = json.loads(json.dumps(release))
    for cell in filled["cells"]:
        if _nbgrader(cell).get("solution"):
            cell["source"] = answer(cell, by_id[_nbgrader(cell)["grade_id"]])
    return filled


def _instructor_answer(cell: dict, source_cell: dict) -> str:
    """What a student who writes the worked solution hands in: the source cell without markers."""
    return "".join(line for line in "".join(source_cell["source"]).splitlines(keepends=True)
                   if "### BEGIN SOLUTION" not in line and "### END SOLUTION" not in line)


def _delegating_answer(cell: dict, source_cell: dict) -> str:
    code = "".join(cell["source"])
    return code.replace(STUDENT_STUB, "    " + DELEGATING[_nbgrader(cell)["grade_id"]])


def _back_to_learning_mode(notebook: dict) -> dict:
    """A student who edits the locked test cells: autograding must restore them."""
    for cell in notebook["cells"]:
        if _nbgrader(cell).get("grade"):
            cell["source"] = "".join(cell["source"]).replace(", raise_on_failure=True", "")
    return notebook


def _write(notebook: dict, path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(notebook, indent=1) + "\n")


@pytest.mark.slow
def test_autograding_gives_full_marks_to_the_solution_and_none_to_calling_the_answer(course):
    course_dir, ids = course
    for name in ids:
        release = _notebook(course_dir / "release" / name / f"{name}.ipynb")
        source = _notebook(course_dir / "source" / name / f"{name}.ipynb")
        _write(_submission(release, source, _instructor_answer),
               course_dir / "submitted" / "correct" / name / f"{name}.ipynb")
        _write(_back_to_learning_mode(_submission(release, source, _delegating_answer)),
               course_dir / "submitted" / "wrong" / name / f"{name}.ipynb")

    make_assignments.run_nbgrader(course_dir, "autograde", make_assignments.ASSIGNMENT_GLOB)

    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course_dir / 'gradebook.db'}") as gradebook:
        for name in ids:
            correct = gradebook.find_submission_notebook(name, name, "correct")
            wrong = gradebook.find_submission_notebook(name, name, "wrong")
            assert correct.max_score > 0 and correct.score == correct.max_score, (name, correct.score)
            assert wrong.max_score == correct.max_score
            assert [(grade.name, grade.auto_score) for grade in wrong.grades] == [
                (grade.name, 0) for grade in wrong.grades], name
    # The wrong student reads why: the restored grading-mode cell raised the checker's explanation.
    graded = _text(_notebook(course_dir / "autograded" / "wrong" / "ex01" / "ex01.ipynb"))
    assert "raise_on_failure=True" in graded
    outputs = json.dumps(_notebook(course_dir / "autograded" / "wrong" / "ex01" / "ex01.ipynb"))
    assert "your function calls frcnn_edu.boxes.box_iou, the function this exercise asks you to write" in outputs
