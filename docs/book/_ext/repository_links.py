"""Links to repository files that are not part of the website become plain code text.

The README, docs/ and the notebooks link to files by their repository path, which works on GitHub
and in JupyterLab: `[solutions/ex01_iou.py](solutions/ex01_iou.py)`, `../CITATION.cff`. The site
holds only the pages (docs/book/build.py stages them), so such a link has no target there. When
the file exists in the repository the link is kept as its text, in code style (the reader sees
where the file lives, and the exercise solutions are not published); a link to a file that
exists nowhere is left alone, so Sphinx still warns about it as a broken reference.

The staged pages keep their repository paths (docname "notebooks/exercises/ex01_iou" comes from
notebooks/exercises/ex01_iou.ipynb), which is how a link is looked up in the repository.
"""
from __future__ import annotations

import posixpath
from pathlib import Path
from typing import Any

from docutils import nodes
from sphinx import addnodes
from sphinx.application import Sphinx


def repository_file(repo: Path, docname: str, target: str) -> Path | None:
    """The repository file a relative link of page `docname` points to, if it exists."""
    path = target.split("#", 1)[0]
    if not path or "://" in path or path.startswith(("/", "mailto:")):
        return None
    candidate = (repo / posixpath.dirname(docname) / path).resolve()
    inside = candidate.is_relative_to(repo.resolve())
    return candidate if inside and candidate.is_file() else None


def unlink_repository_files(app: Sphinx, doctree: nodes.document) -> None:
    """doctree-read: replace unresolvable MyST links to repository files by their text."""
    repo = Path(app.confdir).resolve().parents[1]          # docs/book/ -> the repository
    docname = app.env.docname
    for node in list(doctree.findall(addnodes.pending_xref)):
        if node.get("reftype") != "myst" or node.get("refdomain"):
            continue                                         # a page link or a domain link: resolved
        if repository_file(repo, docname, node["reftarget"]) is not None:
            node.replace_self(nodes.literal(text=node.astext()))


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("doctree-read", unlink_repository_files)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
