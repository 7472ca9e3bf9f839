"""Input validation shared by every public ``mmlib`` function.

A student who passes the wrong thing gets one sentence naming the argument and what was expected — never a stack
trace from deep inside torch or numpy.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "check_tensor",
    "check_bool",
    "check_positive",
    "check_real",
    "check_path",
    "check_folder",
    "check_int",
    "check_probability",
    "check_betas",
    "check_same_length",
    "check_choice",
    "check_generator",
    "check_indices",
    "as_tensor",
]


def as_tensor(x: object, name: str, *, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Accept a tensor or a NumPy array (or nested list of numbers) and return a tensor; else ``TypeError``."""
    if isinstance(x, torch.Tensor):
        out = x
    elif isinstance(x, np.ndarray):
        if x.dtype == object:
            raise TypeError(f"{name}: expected a numeric array, got an array of Python objects")
        out = torch.from_numpy(x)
    elif isinstance(x, (list, tuple)):
        try:
            out = torch.as_tensor(np.asarray(x, dtype=np.float64))
        except (TypeError, ValueError) as err:
            raise TypeError(f"{name}: expected a tensor or array of numbers, got a {type(x).__name__}") from err
    else:
        raise TypeError(f"{name}: expected a torch.Tensor or numpy.ndarray, got {type(x).__name__}")
    if dtype is not None:
        out = out.to(dtype)
    return out


def check_tensor(
    x: object,
    name: str,
    *,
    ndim: int | Sequence[int] | None = None,
    shape: Sequence[int | None] | None = None,
    floating: bool | None = None,
    integer: bool | None = None,
    finite: bool = True,
    nonempty: bool = True,
) -> torch.Tensor:
    """Validate a tensor argument and return it.

    ``shape`` may hold ``None`` for free dimensions; ``floating``/``integer`` require a dtype family; ``finite``
    rejects NaN and ±inf; ``nonempty`` rejects tensors with no elements.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.ndim not in allowed:
            want = " or ".join(str(a) for a in allowed)
            raise ValueError(f"{name}: expected a {want}-dimensional tensor, got shape {tuple(x.shape)}")
    if shape is not None:
        if x.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, x.shape)):
            want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
            raise ValueError(f"{name}: expected shape {want}, got {tuple(x.shape)}")
    if floating is True and not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {x.dtype}")
    if integer is True and (x.is_floating_point() or x.is_complex() or x.dtype == torch.bool):
        raise TypeError(f"{name}: expected an integer tensor, got dtype {x.dtype}")
    if nonempty and x.numel() == 0:
        raise ValueError(f"{name}: expected a non-empty tensor, got shape {tuple(x.shape)}")
    if finite and x.is_floating_point() and x.numel() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name}: contains NaN or infinite values")
    return x


def check_bool(x: object, name: str) -> bool:
    """A bool (``True``/``False``; numpy's bool too), not merely a truthy value."""
    if not isinstance(x, (bool, np.bool_)):
        raise TypeError(f"{name}: expected True or False, got {type(x).__name__}")
    return bool(x)


def check_int(x: object, name: str, *, low: int | None = None, high: int | None = None) -> int:
    """An integer in ``[low, high]`` (bounds optional)."""
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)):
        raise TypeError(f"{name}: expected an int, got {type(x).__name__}")
    x = int(x)
    if low is not None and x < low:
        raise ValueError(f"{name}: expected an int >= {low}, got {x}")
    if high is not None and x > high:
        raise ValueError(f"{name}: expected an int <= {high}, got {x}")
    return x


def check_positive(x: object, name: str, *, allow_zero: bool = False) -> float:
    """A finite real number > 0 (or >= 0 with ``allow_zero``)."""
    if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a number, got {type(x).__name__}")
    x = float(x)
    if not np.isfinite(x) or x < 0 or (x == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name}: expected a finite number {bound}, got {x}")
    return x


def check_path(x: object, name: str) -> Path:
    """A file or folder path: a non-empty ``str`` or an ``os.PathLike``."""
    if isinstance(x, str) and x:
        return Path(x)
    if isinstance(x, os.PathLike):
        return Path(x)
    raise TypeError(f"{name}: expected a file path (a non-empty str or pathlib.Path), got {x!r}")


def check_folder(x: object, name: str) -> Path:
    """A folder path (created later if missing) that is not an existing file."""
    path = check_path(x, name)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{name}: {path} is a file; expected a folder to write into")
    return path


def check_real(x: object, name: str) -> float:
    """A finite real number of any sign."""
    if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a number, got {type(x).__name__}")
    if not np.isfinite(float(x)):
        raise ValueError(f"{name}: expected a finite number, got {x}")
    return float(x)


def check_probability(x: object, name: str, *, open_interval: bool = False) -> float:
    """A number in [0, 1] (or (0, 1) with ``open_interval``)."""
    x = check_positive(x, name, allow_zero=True)
    if x > 1 or (open_interval and x in (0.0, 1.0)):
        interval = "(0, 1)" if open_interval else "[0, 1]"
        raise ValueError(f"{name}: expected a number in {interval}, got {x}")
    return x


def check_betas(betas: object, name: str = "betas") -> tuple[float, float]:
    """Adam's ``(beta1, beta2)``: two numbers in [0, 1)."""
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"{name}: expected a tuple of two numbers (beta1, beta2) in [0, 1), got {betas!r}")
    out = tuple(check_probability(b, f"{name}[{i}]") for i, b in enumerate(betas))
    if max(out) == 1.0:
        raise ValueError(f"{name}: expected two numbers in [0, 1), got {betas!r}")
    return out  # type: ignore[return-value]


def check_same_length(tensors: dict[str, torch.Tensor]) -> int:
    """All tensors share their first dimension; return it."""
    lengths = {name: int(t.shape[0]) for name, t in tensors.items()}
    if len(set(lengths.values())) > 1:
        desc = ", ".join(f"{k}: {v}" for k, v in lengths.items())
        raise ValueError(f"expected the same number of rows in every input, got {desc}")
    return next(iter(lengths.values()))


def check_choice(x: object, name: str, choices: Sequence[str]) -> str:
    """One of ``choices``; the error lists them."""
    if not isinstance(x, str):
        raise TypeError(f"{name}: expected a string, one of {list(choices)}, got {type(x).__name__}")
    if x not in choices:
        raise ValueError(f"{name}: unknown value {x!r}; expected one of {list(choices)}")
    return x


def check_generator(x: object, name: str = "generator") -> torch.Generator | None:
    """``None`` or a ``torch.Generator`` (a private source of random numbers)."""
    if x is not None and not isinstance(x, torch.Generator):
        raise TypeError(f"{name}: expected a torch.Generator or None, got {type(x).__name__}")
    return x


def check_indices(x: object, name: str, size: int, *, shape: Sequence[int | None] | None = None) -> torch.Tensor:
    """An integer tensor of indices into ``size`` items (class labels, token ids, mixture components).

    The range ``0..size-1`` is checked only on the CPU: on a GPU it would cost a host synchronisation, which code run
    at every training step avoids (an index out of range then stops in a device-side assertion instead).
    """
    x = check_tensor(x, name, shape=shape, integer=True, finite=False)
    if x.device.type == "cpu" and (int(x.min()) < 0 or int(x.max()) >= size):
        raise ValueError(f"{name}: expected integers in 0..{size - 1}, got {int(x.min())}..{int(x.max())}")
    return x
