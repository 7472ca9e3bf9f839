"""Test-suite-wide settings.

- Everything runs on the CPU unless a test asks otherwise; progress bars stay quiet in unit tests.
- **Offline, proven**: the network is blocked in this process and, via ``tests/offline/sitecustomize.py`` on
  ``PYTHONPATH``, in every notebook kernel (nbval) and subprocess the tests start. Loopback stays open (kernels talk
  to pytest over it).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

OFFLINE_DIR = Path(__file__).resolve().parent / "offline"

os.environ.setdefault("MMLIB_DEVICE", "cpu")
# Idle OpenMP threads sleep instead of spinning: on a busy machine spinning threads slow small models many-fold.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ["MMLIB_BLOCK_NETWORK"] = "1"
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in [str(OFFLINE_DIR), os.environ.get("PYTHONPATH", "")] if p)

from mmlib.offline import block_network  # noqa: E402

block_network()


@pytest.fixture
def cpu():
    import torch

    return torch.device("cpu")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Report how many bad-input cases the property tests tried (tests/test_bad_input.py)."""
    import sys

    module = sys.modules.get("test_bad_input") or sys.modules.get("tests.test_bad_input")
    if module is not None and module.CASES_TRIED["n"]:
        terminalreporter.write_line(f"bad-input cases tried: {module.CASES_TRIED['n']} (tests/test_bad_input.py)")
