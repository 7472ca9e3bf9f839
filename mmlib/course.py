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

    client = NotebookClient(nb, timeout=timeout, kernel_name=kernel_name, resources={"metadata": {"path": str(cwd)}})
    client.execute()
    return nb


def build_notebooks(selection: Sequence[str] | None = None, *, execute: bool = True) -> None:
    """Write each selected ``.py`` source to its ``.ipynb`` (jupytext) and execute it in place."""
    import jupytext

    for source in notebook_sources(selection):
        nb = jupytext.read(source)
        nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
        start = time.perf_counter()
        if execute:
            execute_notebook(nb, NOTEBOOK_DIR)
        jupytext.write(nb, source.with_suffix(".ipynb"))
        print(f"{source.with_suffix('.ipynb').name}: {'executed' if execute else 'synced'} "
              f"in {time.perf_counter() - start:.1f} s")
