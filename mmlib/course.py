"""Building the course: sync each ``notebooks/NN_*.py`` to its ``.ipynb`` and execute it top to bottom."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from pathlib import Path

from mmlib import REPO_ROOT

__all__ = ["NOTEBOOK_DIR", "notebook_sources", "build_notebooks", "execute_notebook"]

NOTEBOOK_DIR: Path = REPO_ROOT / "notebooks"
_NAME = re.compile(r"^\d\d_[a-z0-9_]+\.py$")


def notebook_sources(selection: Sequence[str] | None = None) -> list[Path]:
    """The jupytext sources ``notebooks/NN_name.py``, in course order; ``selection`` holds numbers or paths."""
    sources = sorted(p for p in NOTEBOOK_DIR.glob("*.py") if _NAME.match(p.name))
    if not selection:
        return sources
    chosen = []
    for item in selection:
        hits = [p for p in sources if p.name.startswith(f"{item}_") or p.stem == Path(item).stem]
        if not hits:
            raise ValueError(f"notebooks: no notebook matches {item!r}; known: {[p.stem for p in sources]}")
        chosen.extend(hits)
    return chosen


def execute_notebook(nb, cwd: Path, timeout: int = 600, kernel_name: str = "python3"):
    """Execute a notebook object in a fresh kernel (working directory ``cwd``) and return it."""
    from nbclient import NotebookClient

    client = NotebookClient(nb, timeout=timeout, kernel_name=kernel_name, resources={"metadata": {"path": str(cwd)}},
                            record_timing=False)  # no wall-clock timestamps in the stored notebooks
    client.execute()
    return nb


#: Threads the stored outputs are computed with. The test suite re-executes the notebooks with the default thread
#: count and compares the checked outputs, which proves they do not depend on the number of threads.
BUILD_THREADS = 1


def _stable_cell_ids(nb) -> None:
    """Give every cell an id made from its source (jupytext draws new random ids on every read), so that rebuilding
    a notebook changes only the cells that changed; a repeated source gets its occurrence number appended."""
    import hashlib

    seen: dict[str, int] = {}
    for cell in nb.cells:
        digest = hashlib.sha1(f"{cell.cell_type}\n{cell.source}".encode()).hexdigest()[:8]
        seen[digest] = seen.get(digest, 0) + 1
        cell.id = digest if seen[digest] == 1 else f"{digest}-{seen[digest]}"


def build_notebooks(selection: Sequence[str] | None = None, *, execute: bool = True) -> None:
    """Write each selected ``.py`` source to its ``.ipynb`` (jupytext) and execute it in place, single-threaded."""
    import os

    import jupytext

    for source in notebook_sources(selection):
        nb = jupytext.read(source)
        _stable_cell_ids(nb)
        nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
        start = time.perf_counter()
        if execute:
            saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
            os.environ.update(OMP_NUM_THREADS=str(BUILD_THREADS), MKL_NUM_THREADS=str(BUILD_THREADS))
            try:
                execute_notebook(nb, NOTEBOOK_DIR)
            finally:
                for key, value in saved.items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value
            nb.metadata["mmlib"] = {"executed_with_threads": BUILD_THREADS}
        jupytext.write(nb, source.with_suffix(".ipynb"))
        print(f"{source.with_suffix('.ipynb').name}: {'executed' if execute else 'synced'} "
              f"in {time.perf_counter() - start:.1f} s")


# --- student versions -----------------------------------------------------------------------------------------------
def _stub_source(source: str, label: str) -> str:
    """Replace the body of every top-level function in ``source`` by ``raise NotImplementedError`` (docstring kept)."""
    import ast

    tree = ast.parse(source)
    lines = source.splitlines()
    replacements: list[tuple[int, int, list[str]]] = []
    for node in tree.body:
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        first = node.body[0]
        has_docstring = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(
            first.value.value, str
        )
        start = first.end_lineno if has_docstring else first.lineno - 1  # 0-based index of the first replaced line
        end = node.end_lineno  # 1-based, inclusive
        message = f"{label}: write this function, then run the check below"
        stub = [" " * first.col_offset + f"raise NotImplementedError({message!r})"]
        replacements.append((start, end, stub))
    for start, end, stub in sorted(replacements, reverse=True):
        lines[start:end] = stub
    return "\n".join(lines) + ("\n" if source.endswith("\n") else "")


def studentise(nb, label_prefix: str = "Exercise"):
    """A student version of an executed notebook: solution cells stubbed, their outputs and the checks' cleared."""
    import copy

    nb = copy.deepcopy(nb)
    clear_next_check = False
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        tags = cell.metadata.get("tags", [])
        if "solution" in tags:
            cell.source = _stub_source(cell.source, label_prefix)
            cell.outputs = []
            cell.execution_count = None
            clear_next_check = True
        elif clear_next_check and "check(" in cell.source:
            cell.outputs = []
            cell.execution_count = None
            clear_next_check = False
    return nb


def make_student_notebooks(out: str | Path = REPO_ROOT / "student") -> list[Path]:
    """Write the student version of every notebook into ``out`` (not committed; see .gitignore)."""
    import nbformat

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for source in notebook_sources():
        ipynb = source.with_suffix(".ipynb")
        nb = nbformat.read(ipynb, as_version=4)
        target = out / ipynb.name
        nbformat.write(studentise(nb, f"Exercise of notebook {source.stem[:2]}"), target)
        written.append(target)
    return written


# --- static site ----------------------------------------------------------------------------------------------------
def _title(nb) -> str:
    first = nb.cells[0].source.splitlines()[0] if nb.cells else ""
    return first.lstrip("# ").strip() or "untitled"


def build_site(out: str | Path = REPO_ROOT / "site") -> Path:
    """An HTML version of the whole course (executed notebooks + an index with the course map) in ``out``."""
    import html

    import nbformat
    from nbconvert import HTMLExporter

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    exporter = HTMLExporter()
    rows = []
    for source in notebook_sources():
        nb = nbformat.read(source.with_suffix(".ipynb"), as_version=4)
        body, _ = exporter.from_notebook_node(nb)
        page = out / f"{source.stem}.html"
        page.write_text(body, encoding="utf-8")
        rows.append(f'<li><a href="{page.name}">{html.escape(_title(nb))}</a></li>')
    index = out / "index.html"
    index.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>Multimodal generative learning</title>"
        "<style>body{font-family:sans-serif;max-width:50em;margin:3em auto;font-size:1.2em}</style></head><body>"
        "<h1>Multimodal generative learning, from likelihoods to multimodal GANs</h1>"
        "<p>The course's notebooks, executed. Run them yourself: see the repository's README.</p>"
        f"<ol start='0'>{''.join(rows)}</ol></body></html>\n",
        encoding="utf-8",
    )
    return index
