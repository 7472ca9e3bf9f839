"""The setup cell on Colab, simulated: a fake ``google.colab`` module, the course cloned from this checkout.

The test runs the setup cell exactly as stored in notebook 00 in a fresh kernel whose working directory is a
temporary folder, then checks that ``mmlib`` is imported from the fresh clone and that the course data loads from it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import jupytext
import nbformat
import pytest

from mmlib.course import execute_notebook

ROOT = Path(__file__).resolve().parent.parent


def _setup_source() -> str:
    nb = jupytext.read(ROOT / "notebooks" / "00_setup.py")
    return next(c.source for c in nb.cells if "setup" in c.metadata.get("tags", []))


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs git and a checkout")
def test_setup_cell_on_simulated_colab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("the checkout has no commit to clone yet")
    fake = tmp_path / "fake_site" / "google" / "colab"
    fake.mkdir(parents=True)
    (fake.parent / "__init__.py").write_text("")
    (fake / "__init__.py").write_text("IN_FAKE_COLAB = True\n")
    work = tmp_path / "content"
    work.mkdir()
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "fake_site"))
    monkeypatch.setenv("MMLIB_SOURCE", f"file://{ROOT}")

    source = _setup_source()
    assert "pip install" not in source, "the setup cell never reinstalls packages (Colab's torch/numpy/ipywidgets)"
    check = (
        "from pathlib import Path\n"
        "import google.colab, ipywidgets, numpy, torch\n"
        "assert google.colab.IN_FAKE_COLAB\n"
        "clone = (Path.cwd() / 'mmgen-course').resolve()\n"
        "assert Path(mmlib.__file__).resolve().is_relative_to(clone), mmlib.__file__\n"
        "assert mmlib.REPO_ROOT == clone\n"
        "from mmlib.data import load_multimodal_digits\n"
        "ds = load_multimodal_digits(device='cpu')\n"
        "print('COLAB-OK', len(ds.train) + len(ds.val) + len(ds.test))\n"
    )
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source), nbformat.v4.new_code_cell(check)])
    execute_notebook(nb, cwd=work, timeout=300)
    printed = "".join(o.get("text", "") for o in nb.cells[1].outputs if o.output_type == "stream")
    assert "COLAB-OK 1797" in printed, printed
    assert (work / "mmgen-course" / "data" / "README.md").exists(), "the clone brought the course data"
