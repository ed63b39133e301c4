"""Build the course website (`make book`): stage the sources, then run Sphinx + myst-nb on them.

    python docs/book/build.py                       # everything -> build/book/html/index.html
    python docs/book/build.py --only 01_boxes       # the pages, the API and one notebook (tests)

Why a staging folder (build/book/src) rather than pointing Sphinx at the repository: the site
takes its pages from four places (docs/book/, README.md and friends, docs/, notebooks/), and
copying exactly those keeps everything else out of it -- above all notebooks/exercises/solutions/,
which must not be published (a Markdown link to an existing file would otherwise be copied into
the site as a download). The copies keep their repository paths, so the links between README,
docs/ and the notebooks resolve as they do on GitHub, and each notebook runs in
build/book/src/notebooks/, one folder below the root as in `make lab`.

The configuration stays in docs/book/conf.py (sphinx-build -c docs/book). Executed notebooks are
cached in build/book/jupyter_cache (myst-nb "cache" mode), keyed on their code: a rebuild runs
only the notebooks whose code changed.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

BOOK = Path(__file__).resolve().parent
REPO = BOOK.parents[1]
PAGES = ["index.md", "api.md"]                        # docs/book/ -> the site's root
DOCS = ["README.md", "CONTRIBUTING.md", "CHANGELOG.md", "docs/teaching.md", "docs/references.md"]
COURSE = "notebooks/[0-9][0-9]_*.ipynb"
EXERCISES = "notebooks/exercises/ex[0-9][0-9]_*.ipynb"  # not solutions/: never staged


def notebooks(only: list[str] | None = None) -> list[Path]:
    """The course and exercise notebooks (repository paths), or those whose stem is in `only`."""
    found = sorted(REPO.glob(COURSE)) + sorted(REPO.glob(EXERCISES))
    if only is not None:
        found = [path for path in found if path.stem in only]
        missing = set(only) - {path.stem for path in found}
        if missing:
            raise SystemExit(f"no such notebook: {', '.join(sorted(missing))}")
    return found


def stage(src: Path, only: list[str] | None = None) -> list[Path]:
    """Copy the site's sources into `src` (emptied first); returns the staged files."""
    if src.exists():
        shutil.rmtree(src)
    copies = [(BOOK / name, src / name) for name in PAGES]
    copies += [(REPO / name, src / name) for name in DOCS]
    copies += [(path, src / path.relative_to(REPO)) for path in notebooks(only)]
    for origin, copy in copies:
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(origin, copy)
    return [copy for _, copy in copies]


def build(out: Path, only: list[str] | None = None, strict: bool = False, jobs: str = "1") -> int:
    """Stage into out/src and build HTML into out/html; returns sphinx-build's exit status.

    strict turns warnings into errors (-W --keep-going: every warning is reported, then it fails).
    The notebook cache lives in out/jupyter_cache; the warnings are also written to out/warnings.txt.
    """
    from sphinx.cmd.build import build_main

    src = out / "src"
    stage(src, only)
    # -E: read every page afresh (a changed extension or included README shows at once); the
    # notebooks' outputs come from the cache, so that costs seconds, not a re-run.
    args = ["-b", "html", "-E", "-c", str(BOOK), "-q", "-j", jobs,
            "-D", f"nb_execution_cache_path={out / 'jupyter_cache'}", "-w", str(out / "warnings.txt"),
            str(src), str(out / "html")]
    if strict:
        args = ["-W", "--keep-going", *args]
    return build_main(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "build" / "book", help="default: build/book")
    parser.add_argument("--only", nargs="+", metavar="STEM", help="only these notebooks, e.g. 01_boxes")
    parser.add_argument("--strict", action="store_true", help="fail on any Sphinx warning")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    status = build(args.out.resolve(), args.only, strict=args.strict)
    if status == 0:
        index = args.out / "html" / "index.html"
        print(f"course website: {index} ({time.perf_counter() - started:.0f} s)")
    return status


if __name__ == "__main__":
    sys.exit(main())
