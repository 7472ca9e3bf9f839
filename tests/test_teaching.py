"""Teaching features: student versions, exercise checks, slides, the static site."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch

from mmlib import exercises
from mmlib.course import make_student_notebooks, notebook_sources

ROOT = Path(__file__).resolve().parent.parent
SOURCES = notebook_sources()
CHECK_CALL = re.compile(r"""check\(\s*["'](?P<key>\d\d\.\d+)["']\s*,\s*(?P<fn>\w+)\s*\)""")


def _exercises(nb) -> list[tuple[str, str, str]]:
    """(key, function name, solution source) for every solution cell followed by its check call."""
    found, solution = [], None
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        if "solution" in cell.metadata.get("tags", []):
            solution = cell.source
        elif solution is not None and (m := CHECK_CALL.search(cell.source)):
            found.append((m["key"], m["fn"], solution))
            solution = None
    return found


def _namespace() -> dict:
    import torch.nn.functional as F  # noqa: N812

    return {"torch": torch, "np": np, "math": math, "F": F, "nn": torch.nn}


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("student")
    make_student_notebooks(out)
    return out


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_every_chapter_has_exercises(source: Path):
    nb = nbformat.read(source.with_suffix(".ipynb"), as_version=4)
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    exercise_heads = re.findall(r"\*\*\d\d\.\d+\b", text)
    minimum = 3 if source.name[:2] != "00" else 2
    assert len(exercise_heads) >= minimum, f"{source.name} has at least {minimum} numbered exercises"
    if source.name[:2] != "00":
        assert _exercises(nb), f"{source.name} has an implementable exercise with a check"


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_checks_fail_on_stub_and_pass_on_solution(source: Path, student_dir: Path, capsys):
    full = nbformat.read(source.with_suffix(".ipynb"), as_version=4)
    student = nbformat.read(student_dir / source.with_suffix(".ipynb").name, as_version=4)
    pairs = list(zip(_exercises(full), _exercises(student), strict=True))
    for (key, fn_name, solution), (_, _, stub) in pairs:
        assert "NotImplementedError" in stub and stub != solution, f"{key}: the student version holds a stub"
        ns = _namespace()
        exec(compile(solution, f"<solution {key}>", "exec"), ns)  # noqa: S102
        exercises.check(key, ns[fn_name])
        assert exercises.RESULTS[key], f"{key}: the check passes on the course's solution\n{capsys.readouterr().out}"
        ns = _namespace()
        exec(compile(stub, f"<stub {key}>", "exec"), ns)  # noqa: S102
        exercises.check(key, ns[fn_name])
        assert not exercises.RESULTS[key], f"{key}: the check fails on the stub"
        assert "not implemented yet" in capsys.readouterr().out


def test_student_versions_clear_solution_outputs(student_dir: Path):
    for path in sorted(student_dir.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if "solution" in cell.metadata.get("tags", []):
                assert cell.outputs == [] and "raise NotImplementedError" in cell.source, path.name


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_slideshow_metadata(source: Path):
    nb = nbformat.read(source.with_suffix(".ipynb"), as_version=4)
    kinds = [c.metadata.get("slideshow", {}).get("slide_type") for c in nb.cells]
    assert kinds[0] == "slide", f"{source.name}: the title cell opens a slide"
    setup = next(c for c in nb.cells if "setup" in c.metadata.get("tags", []))
    assert setup.metadata.get("slideshow", {}).get("slide_type") == "skip", f"{source.name}: setup is skipped"
    assert kinds.count("slide") >= 4, f"{source.name}: one idea per slide (at least 4 slides)"


def test_every_notebook_converts_to_slides(tmp_path: Path):
    ipynbs = [str(p.with_suffix(".ipynb")) for p in SOURCES]
    out = subprocess.run(
        [sys.executable, "-m", "jupyter", "nbconvert", "--to", "slides", "--output-dir", str(tmp_path), *ipynbs],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    for p in SOURCES:
        html = (tmp_path / f"{p.stem}.slides.html").read_text()
        assert "reveal" in html.lower() and "<section" in html


def test_static_site(tmp_path: Path):
    out = subprocess.run([sys.executable, "-m", "mmlib", "site", "--out", str(tmp_path)], capture_output=True,
                         text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    index = (tmp_path / "index.html").read_text()
    for p in SOURCES:
        assert f'href="{p.stem}.html"' in index and (tmp_path / f"{p.stem}.html").exists()
