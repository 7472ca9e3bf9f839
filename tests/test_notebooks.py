"""Checks of the committed notebooks themselves (nbval executes them; these check how they are stored)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jupytext
import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
SOURCES = sorted(p for p in NOTEBOOKS.glob("*.py") if re.match(r"\d\d_", p.name))
IPYNBS = sorted(NOTEBOOKS.glob("*.ipynb"))
MAX_BYTES = 2_000_000
# Paths that give away a machine or a user: home folders, temporary folders, virtual environments, kernel files.
MACHINE_PATH = re.compile(
    r"(/home/[\w.-]+|/root/|/Users/[\w.-]+|[A-Za-z]:\\\\Users|/tmp/|/private/var/|/work/|site-packages|"
    r"ipykernel_\d+|/var/folders/)"
)


def _cells(nb) -> list[tuple[str, str, dict]]:
    """(type, source, kept metadata) of every cell, the way the sync test compares them."""
    out = []
    for cell in nb.cells:
        meta = {k: cell.metadata[k] for k in ("slideshow", "tags") if k in cell.metadata}
        out.append((cell.cell_type, cell.source.strip(), meta))
    return out


def test_there_are_notebooks():
    assert SOURCES, "notebooks/NN_*.py sources exist"


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_pair_in_sync(source: Path):
    ipynb = source.with_suffix(".ipynb")
    assert ipynb.exists(), f"{source.name} has its executed {ipynb.name} beside it (run: python -m mmlib build)"
    from_py = jupytext.read(source)
    from_ipynb = nbformat.read(ipynb, as_version=4)
    assert _cells(from_py) == _cells(from_ipynb), (
        f"{source.name} and {ipynb.name} differ: edit the .py, then run `python -m mmlib build {source.name[:2]}`"
    )


@pytest.mark.parametrize("ipynb", IPYNBS, ids=lambda p: p.stem)
def test_every_ipynb_has_a_source(ipynb: Path):
    assert ipynb.with_suffix(".py").exists(), f"{ipynb.name} has a jupytext .py source"


@pytest.mark.parametrize("ipynb", IPYNBS, ids=lambda p: p.stem)
def test_stored_notebook_is_clean(ipynb: Path):
    assert ipynb.stat().st_size <= MAX_BYTES, f"{ipynb.name} is at most 2 MB"
    nb = json.loads(ipynb.read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "python3", "kernelspec is python3"
    counts = [c.get("execution_count") for c in nb["cells"] if c["cell_type"] == "code"]
    assert counts == list(range(1, len(counts) + 1)), (
        f"{ipynb.name} was executed top to bottom in one fresh kernel (execution counts {counts})"
    )
    for i, cell in enumerate(nb["cells"]):
        for output in cell.get("outputs", []):
            assert output["output_type"] != "error", f"cell {i} of {ipynb.name} stores an error output"
            text = json.dumps(output)
            match = MACHINE_PATH.search(text)
            assert match is None, f"cell {i} of {ipynb.name} shows a machine path: {match.group(0)!r}"


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_cell_ids_come_from_the_sources_and_no_timestamps_are_stored(source: Path):
    """A rebuild rewrites only the cells that changed: ids are made from each cell's source (not drawn at random)
    and no execution timestamps are kept."""
    from mmlib.course import _stable_cell_ids

    expected = jupytext.read(source)
    _stable_cell_ids(expected)
    stored = json.loads(source.with_suffix(".ipynb").read_text())
    assert [c["id"] for c in stored["cells"]] == [c.id for c in expected.cells], (
        f"{source.stem}.ipynb has the ids `python -m mmlib build {source.name[:2]}` gives"
    )
    assert not any("execution" in c["metadata"] for c in stored["cells"]), "no execution timestamps are stored"


def _setup_cell(path: Path) -> str:
    nb = jupytext.read(path)
    setup = [c for c in nb.cells if "setup" in c.metadata.get("tags", [])]
    assert len(setup) == 1, f"{path.name} has exactly one cell tagged 'setup'"
    return setup[0].source


def test_setup_cell_identical_everywhere():
    reference = _setup_cell(SOURCES[0])
    for source in SOURCES[1:]:
        assert _setup_cell(source) == reference, f"{source.name}'s setup cell is identical to {SOURCES[0].name}'s"


def test_setup_cell_is_the_first_code_cell_and_names_the_one_source():
    import tomllib

    url = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Source"]
    for source in SOURCES:
        nb = jupytext.read(source)
        first_code = next(c for c in nb.cells if c.cell_type == "code")
        assert "setup" in first_code.metadata.get("tags", []), f"{source.name}: the setup cell comes first"
        assert f'"{url}"' in first_code.source, f"{source.name}: the setup cell clones {url} (pyproject's Source)"


def test_every_notebook_opens_with_title_badge_and_goals():
    for source in SOURCES:
        first = jupytext.read(source).cells[0]
        assert first.cell_type == "markdown" and first.source.startswith("# "), f"{source.name} opens with a title"
        assert f"notebooks/{source.stem}.ipynb" in first.source and "colab-badge" in first.source, (
            f"{source.name} has an Open-in-Colab badge pointing at itself"
        )
        assert "you will" in first.source.lower(), f"{source.name} states its learning goals"


def test_every_notebook_has_summary_and_exercises():
    for source in SOURCES:
        text = source.read_text()
        assert "## Summary" in text, f"{source.name} has a summary"
        assert "## Exercises" in text, f"{source.name} has exercises"


@pytest.mark.parametrize("ipynb", IPYNBS, ids=lambda p: p.stem)
def test_stored_outputs_were_computed_single_threaded(ipynb: Path):
    """Determinism across thread counts: the stored outputs come from a 1-thread run (``python -m mmlib build``);
    nbval re-executes every notebook with the default thread count and compares the checked outputs."""
    nb = json.loads(ipynb.read_text())
    assert nb["metadata"].get("mmlib", {}).get("executed_with_threads") == 1, (
        f"{ipynb.name} was built with `python -m mmlib build` (single-threaded)"
    )
