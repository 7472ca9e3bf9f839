"""The experiment registry behind ``python -m mmlib run NAME --seed S --out DIR``.

Each chapter registers the functions that produce its results; the notebook calls the same function. A run writes
``DIR/metrics.json`` (a flat object of named figures) and ``DIR/arrays.npz`` (the arrays behind them); the naming
conventions are in COURSE.md, "Experiments".
"""

from __future__ import annotations

import importlib
import io
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmlib.checkpoint import atomic_write_bytes
from mmlib.checks import check_folder

__all__ = ["Result", "TrainedResult", "Experiment", "register", "get_experiment", "list_experiments", "run_experiment",
           "write_result"]

#: Modules that register experiments, imported on demand (keep in course order).
EXPERIMENT_MODULES: tuple[str, ...] = (
    "mmlib.data",
    "mmlib.classifiers",
    "mmlib.likelihood",
    "mmlib.pcca",
    "mmlib.gan",
    "mmlib.vae",
    "mmlib.aae",
    "mmlib.cgan",
    "mmlib.mvae",
    "mmlib.mmgan",
)

Number = int | float


@dataclass
class Result:
    """What an experiment returns: named scalar figures and named arrays (tensors are converted on writing)."""

    metrics: dict[str, Number]
    arrays: dict[str, np.ndarray | torch.Tensor] = field(default_factory=dict)


@dataclass
class TrainedResult(Result):
    """A :class:`Result` that also hands what the run trained to the notebook that ran it (never written to disk).

    ``models``: the trained models (or fitted objects holding them) by name; ``details``: what the notebook shows of
    the training beside the figures (histories, per-run evaluations). A notebook that calls
    ``run_experiment(NAME)`` so reports exactly what ``python -m mmlib run NAME`` writes, and can still plot and
    probe the models behind it.
    """

    models: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Experiment:
    name: str
    description: str
    fn: Callable[..., Result]


_REGISTRY: dict[str, Experiment] = {}


def register(name: str, description: str) -> Callable[[Callable[..., Result]], Callable[..., Result]]:
    """Decorator: register ``fn(seed: int = 0, device=None) -> Result`` under ``name``."""

    def decorate(fn: Callable[..., Result]) -> Callable[..., Result]:
        existing = _REGISTRY.get(name)
        if existing is not None and existing.fn.__qualname__ != fn.__qualname__:
            raise ValueError(f"name: experiment {name!r} is already registered by {existing.fn.__module__}")
        _REGISTRY[name] = Experiment(name, description, fn)
        return fn

    return decorate


def _load_all() -> None:
    for module in EXPERIMENT_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:  # a chapter whose module is not written yet registers nothing
            if err.name != module:
                raise


def list_experiments() -> list[Experiment]:
    """Every registered experiment, in course order."""
    _load_all()
    return list(_REGISTRY.values())


def get_experiment(name: str) -> Experiment:
    """The experiment called ``name``; a ``ValueError`` lists the known names otherwise."""
    if not isinstance(name, str):
        raise TypeError(f"name: expected an experiment name (str), got {type(name).__name__}")
    _load_all()
    if name not in _REGISTRY:
        raise ValueError(f"name: unknown experiment {name!r}; known: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def _to_numpy(name: str, value: object) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value
    try:
        return np.asarray(value)
    except Exception as err:  # noqa: BLE001
        raise TypeError(f"arrays[{name!r}]: expected an array or tensor, got {type(value).__name__}") from err


def write_result(result: Result, out: str | Path) -> tuple[Path, Path]:
    """Write ``metrics.json`` and ``arrays.npz`` into the folder ``out`` (created if needed), atomically."""
    if not isinstance(result, Result):
        raise TypeError(f"result: expected an mmlib.experiments.Result, got {type(result).__name__}")
    out = check_folder(out, "out")
    metrics: dict[str, Number | str] = {}
    for key, value in result.metrics.items():
        if isinstance(value, (np.generic, torch.Tensor)):
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise TypeError(f"metrics[{key!r}]: expected a number, got {type(value).__name__}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"metrics[{key!r}]: is {value}; experiments must report finite figures")
        metrics[key] = value
    metrics_path = out / "metrics.json"
    atomic_write_bytes(metrics_path, (json.dumps(metrics, indent=2, sort_keys=True) + "\n").encode())
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{k: _to_numpy(k, v) for k, v in result.arrays.items()})
    arrays_path = out / "arrays.npz"
    atomic_write_bytes(arrays_path, buffer.getvalue())
    return metrics_path, arrays_path


def run_experiment(
    name: str, *, seed: int = 0, out: str | Path | None = None, device: str | torch.device | None = None
) -> Result:
    """Run experiment ``name`` with ``seed`` on ``device``; write its files into ``out`` when given."""
    from mmlib.device import resolve_device
    from mmlib.seed import seed_everything

    experiment = get_experiment(name)
    out = None if out is None else check_folder(out, "out")
    seed_everything(seed)
    start = time.perf_counter()
    result = experiment.fn(seed=seed, device=resolve_device(device))
    if not isinstance(result, Result):
        raise TypeError(f"experiment {name!r} returned {type(result).__name__}, expected mmlib.experiments.Result")
    result.metrics.setdefault("seconds", round(time.perf_counter() - start, 2))
    if out is not None:
        write_result(result, out)
    return result
