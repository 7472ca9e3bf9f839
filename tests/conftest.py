"""Shared fixtures: run everything on the CPU unless a test asks otherwise, keep progress bars quiet."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("MMLIB_DEVICE", "cpu")
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture
def cpu() -> object:
    import torch

    return torch.device("cpu")
