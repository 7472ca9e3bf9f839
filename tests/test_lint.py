"""ruff over the package, the tests and the notebook sources (configuration in pyproject.toml)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_clean():
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    result = subprocess.run(
        [ruff, "check", "--no-cache", "mmlib", "tests", "notebooks"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, f"ruff found problems:\n{result.stdout}{result.stderr}"
