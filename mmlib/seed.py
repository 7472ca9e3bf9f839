"""Reproducibility: one call seeds Python, NumPy and PyTorch (every notebook's setup cell calls it once)."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

__all__ = ["seed_everything", "make_generator"]


def seed_everything(seed: int) -> None:
    """Seed ``random``, NumPy and PyTorch (all devices) with ``seed``.

    Same seed → same numbers on the same machine and library versions. Kernels whose results depend on scheduling
    (some CUDA reductions) can still differ in the last bits; the course's checked outputs are rounded for that reason.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed: expected 0 <= seed < 2**32, got {seed}")
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds CUDA and MPS generators


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A private ``torch.Generator`` on ``device`` seeded with ``seed`` (randomness that disturbs no other)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen
