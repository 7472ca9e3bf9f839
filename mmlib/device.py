"""Device choice: CUDA, then Apple's MPS, then the CPU (taught in notebook 00).

Override with the environment variable ``MMLIB_DEVICE`` (for example ``MMLIB_DEVICE=cpu``) or the ``preferred``
argument. Library code never moves anything to a GPU by name: every model and tensor goes to the device this
function returns.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

__all__ = ["get_device", "resolve_device", "describe_device", "one_cpu_thread"]


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def get_device(preferred: str | torch.device | None = None, *, name: str = "preferred") -> torch.device:
    """Return the device to compute on: ``preferred``, else ``$MMLIB_DEVICE``, else CUDA → MPS → CPU.

    Raises ``ValueError`` when the requested device is unknown or not available on this machine, and ``TypeError``
    when it is not a string or ``torch.device``; ``name`` is the argument the messages name.
    """
    if preferred is not None and not isinstance(preferred, (str, torch.device)):
        raise TypeError(f"{name}: expected None, a string such as 'cpu' or 'cuda', or a torch.device, "
                        f"got {type(preferred).__name__}")
    choice = preferred if preferred is not None else os.environ.get("MMLIB_DEVICE") or None
    if choice is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(choice)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"{name}: expected 'cpu', 'cuda', 'cuda:N' or 'mps', got {choice!r}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{name}: CUDA was requested ({choice!r}) but torch sees no CUDA device here")
    if device.type == "mps" and not _mps_available():
        raise ValueError(f"{name}: MPS was requested ({choice!r}) but it is not available here")
    if device.type not in {"cpu", "cuda", "mps"}:
        raise ValueError(f"{name}: expected 'cpu', 'cuda' or 'mps', got {choice!r}")
    return device


def resolve_device(device: str | torch.device | None, name: str = "device") -> torch.device:
    """``None`` → :func:`get_device`; a string or device → that device, validated (errors name ``name``)."""
    return get_device() if device is None else get_device(device, name=name)


def describe_device(device: torch.device | str) -> str:
    """A one-line human description: the GPU's name, or the CPU's thread count."""
    device = resolve_device(device)
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "mps":
        return "mps (Apple GPU)"
    return f"cpu ({torch.get_num_threads()} threads)"


@contextlib.contextmanager
def one_cpu_thread(device: torch.device | str | None = None) -> Iterator[None]:
    """Run the body on one CPU thread when ``device`` is the CPU, then restore torch's thread count.

    For the course's small networks (matrices of a few hundred rows, notebooks 03, 06 and 08): a second thread only
    adds synchronisation, and on a busy machine its spin-waiting can cost more CPU time than the work itself. One
    thread also makes the trained numbers independent of the machine's thread count. GPUs are not affected.
    """
    device = resolve_device(device)
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
