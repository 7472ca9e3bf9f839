"""The course's widgets work on ipywidgets 8 (this environment) and on 7.7.1 (what Google Colab ships).

ipywidgets 7.7.1 is installed once, without dependencies, into ``data/cache/ipywidgets-7.7.1`` (git-ignored) and put
first on the kernel's path; the same cell then runs in a fresh kernel under each version: sliders are built, moved,
and the drawing function must see every move.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from mmlib.course import execute_notebook

ROOT = Path(__file__).resolve().parent.parent
OLD = ROOT / "data" / "cache" / "ipywidgets-7.7.1"

CELL = """
import ipywidgets, matplotlib
import matplotlib.pyplot as plt
from mmlib.widgets import slider_plot
seen = []
def draw(mu, sigma, k):
    seen.append((round(mu, 2), round(sigma, 2), k))
    plt.plot([0, mu * k], [0, sigma])
panel = slider_plot(draw, mu=(-2.0, 2.0, 0.1, 0.0), sigma=(0.1, 3.0, 0.1, 1.0), k=(1, 5, 1, 2))
display(panel)
mu_slider, sigma_slider, k_slider = panel.children[0].children
mu_slider.value = 0.5
sigma_slider.value = 2.0
k_slider.value = 4
print("VERSION", ipywidgets.__version__)
print("SEEN", seen)
"""


def _install_old() -> None:
    if (OLD / "ipywidgets" / "__init__.py").exists():
        return
    env = dict(os.environ, MMLIB_BLOCK_NETWORK="0")  # fetching a test tool, not running the course
    out = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(OLD),
         "ipywidgets==7.7.1", "ipython_genutils==0.2.0"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    if out.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"could not install ipywidgets 7.7.1 for the widget test:\n{out.stderr}")
        pytest.skip("ipywidgets 7.7.1 could not be installed (no package index reachable)")


def _run(tmp_path: Path, extra_path: Path | None) -> str:
    saved = os.environ.get("PYTHONPATH", "")
    if extra_path is not None:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(extra_path), saved])
    try:
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(CELL)])
        execute_notebook(nb, cwd=tmp_path, timeout=120)
    finally:
        os.environ["PYTHONPATH"] = saved
    return "".join(o.get("text", "") for o in nb.cells[0].outputs if o.output_type == "stream")


@pytest.mark.parametrize("version", ["8", "7.7.1"])
def test_slider_plot_redraws_on_every_move(version: str, tmp_path: Path):
    if version == "7.7.1":
        _install_old()
    printed = _run(tmp_path, OLD if version == "7.7.1" else None)
    reported = printed.split("VERSION ")[1].split()[0]
    assert reported.startswith(version), f"the kernel ran ipywidgets {reported}, expected {version}"
    assert "SEEN [(0.0, 1.0, 2), (0.5, 1.0, 2), (0.5, 2.0, 2), (0.5, 2.0, 4)]" in printed, printed
