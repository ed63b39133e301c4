"""Re-execute the notebooks and store the outputs nbval checks: `make notebook-outputs`.

The committed state of every notebook (tests/test_notebooks_committed_state.py enforces it):
  - cells tagged `nbval-check-output` (cell metadata "tags", which nbval reads) keep their text
    output and an execution count: that stored output is what `pytest --nbval-lax` compares a
    fresh run against, so the numbers these cells print cannot drift unnoticed;
  - every other code cell is stripped (no outputs, no execution count): figures and widgets are
    made fresh by whoever runs the notebook, and the repository stays small.

    python tools/refresh_notebook_outputs.py [NOTEBOOK ...]   (default: every notebook)

Each notebook runs top to bottom in a fresh kernel, in its own directory, as nbval runs it.
A first line `# NBVAL_CHECK_OUTPUT`, the older way to mark such a cell, still counts for now; new
cells use the tag, so that learners see clean code.
"""
from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
TAG = "nbval-check-output"
LEGACY_MARK = "NBVAL_CHECK_OUTPUT"   # as a comment line, still accepted; the notebooks use the tag


def notebooks() -> list[Path]:
    return sorted(p for p in (ROOT / "notebooks").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def is_checked(cell) -> bool:
    """Whether nbval compares this cell's output: tagged `nbval-check-output` (or the old comment)."""
    if cell.cell_type != "code":
        return False
    tags = cell.get("metadata", {}).get("tags", [])
    return TAG in tags or any(line.strip().startswith("#") and line.strip().lstrip("#").strip() == LEGACY_MARK
                              for line in cell.source.splitlines())


def text_outputs(outputs: list) -> list:
    """The outputs nbval compares, reduced to text: streams and text/plain results."""
    kept = []
    for output in outputs:
        if output.output_type == "stream":
            kept.append(nbformat.v4.new_output("stream", name=output.name, text=output.text))
        elif output.output_type == "execute_result" and "text/plain" in output.data:
            kept.append(nbformat.v4.new_output("execute_result", data={"text/plain": output.data["text/plain"]},
                                               execution_count=output.execution_count))
        elif output.output_type == "error":
            raise RuntimeError(f"cell raised {output.ename}: {output.evalue}")
        else:
            raise RuntimeError(f"a cell tagged {TAG} must print text only; it produced {output.output_type} "
                               f"{sorted(getattr(output, 'data', {}))}")
    return kept


def refresh(path: Path) -> float:
    notebook = nbformat.read(path, as_version=4)
    metadata = copy.deepcopy(notebook.metadata)   # the kernel would add its version details
    started = time.perf_counter()
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    seconds = time.perf_counter() - started
    count = 0
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        if is_checked(cell):
            count += 1
            try:
                cell.outputs = text_outputs(cell.outputs)
            except RuntimeError as error:
                raise RuntimeError(f"{path.name}: {error}\n{cell.source}") from None
            cell.execution_count = count
        else:
            cell.outputs, cell.execution_count = [], None
        cell.metadata.pop("execution", None)
    notebook.metadata = metadata
    nbformat.write(notebook, path)
    return seconds


def main(argv: list[str]) -> int:
    paths = [Path(a).resolve() for a in argv] or notebooks()
    for path in paths:
        seconds = refresh(path)
        print(f"{seconds:6.1f} s  {path.relative_to(ROOT)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
