"""Checkpoints: ``torch.save`` of state dicts, written atomically, loaded with ``weights_only=True``."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from mmlib.checks import check_path
from mmlib.device import resolve_device

__all__ = ["save_checkpoint", "load_checkpoint", "atomic_write_bytes"]


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and an atomic rename.

    An interrupted write leaves either the old file or the new one, never half of one.
    """
    path = check_path(path, "path")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data: expected bytes, got {type(data).__name__}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(path: str | Path, **state: dict) -> Path:
    """Save named state dicts (``model=net.state_dict(), optimizer=opt.state_dict()``) to ``path`` atomically."""
    path = check_path(path, "path")
    if not state:
        raise ValueError("state: expected at least one named state dict, e.g. save_checkpoint(path, model=...)")
    for name, value in state.items():
        if not isinstance(value, dict):
            raise TypeError(f"{name}: expected a state dict (module.state_dict()), got {type(value).__name__}")
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def load_checkpoint(path: str | Path, map_location: str | torch.device | None = "cpu") -> dict[str, dict]:
    """Load what :func:`save_checkpoint` wrote, with ``weights_only=True`` (no arbitrary code runs)."""
    path = check_path(path, "path")
    if not path.is_file():
        raise ValueError(f"path: no checkpoint file at {path}")
    map_location = None if map_location is None else resolve_device(map_location, name="map_location")
    return torch.load(path, map_location=map_location, weights_only=True)
