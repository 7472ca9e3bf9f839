"""Figures for the lecture hall: large fonts, one result per figure (used by every notebook)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

__all__ = ["use_course_style", "image_grid", "scatter_2d", "density_2d", "loss_curves"]


def use_course_style() -> None:
    """Large, legible defaults for slides and screens (the setup cell calls this)."""
    plt.rcParams.update(
        {
            "figure.figsize": (7.0, 4.5),
            "figure.dpi": 80,
            "savefig.dpi": 110,
            "font.size": 13,
            "axes.titlesize": 15,
            "axes.labelsize": 13,
            "legend.fontsize": 11,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "image.cmap": "gray_r",
        }
    )


def _numpy(x: torch.Tensor | np.ndarray, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().float().numpy()
    if isinstance(x, np.ndarray):
        return x
    raise TypeError(f"{name}: expected a tensor or array, got {type(x).__name__}")


def image_grid(
    images: torch.Tensor | np.ndarray,
    *,
    nrow: int = 10,
    titles: Sequence[str] | None = None,
    title: str | None = None,
    cmap: str = "gray_r",
    vmin: float | None = 0.0,
    vmax: float | None = 1.0,
    scale: float = 0.9,
    ax_size: float | None = None,
) -> plt.Figure:
    """Show images ``(N, H, W)`` or ``(N, 1, H, W)`` (or spectrograms ``(N, F, T)``) in a grid of ``nrow`` columns."""
    arr = _numpy(images, "images")
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 3 or arr.shape[0] == 0:
        raise ValueError(f"images: expected shape (N, H, W) or (N, 1, H, W) with N > 0, got {arr.shape}")
    if titles is not None and len(titles) != len(arr):
        raise ValueError(f"titles: expected {len(arr)} titles, got {len(titles)}")
    n = len(arr)
    cols = min(nrow, n)
    rows = int(np.ceil(n / cols))
    size = ax_size if ax_size is not None else scale
    fig, axes = plt.subplots(rows, cols, figsize=(cols * size, rows * size * (1.25 if titles else 1.0)), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(arr[i], cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto" if arr.shape[1] != arr.shape[2] else None,
                      origin="lower" if arr.shape[1] != arr.shape[2] else "upper", interpolation="nearest")
            if titles is not None:
                ax.set_title(titles[i], fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def scatter_2d(
    points: torch.Tensor | np.ndarray,
    *,
    modes: torch.Tensor | np.ndarray | None = None,
    ax: plt.Axes | None = None,
    title: str | None = None,
    s: float = 4.0,
    alpha: float = 0.5,
    label: str = "samples",
) -> plt.Axes:
    """Scatter 2D samples, with the true modes as red crosses when given."""
    pts = _numpy(points, "points")
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"points: expected shape (N, 2), got {pts.shape}")
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(pts[:, 0], pts[:, 1], s=s, alpha=alpha, label=label)
    if modes is not None:
        m = _numpy(modes, "modes")
        ax.scatter(m[:, 0], m[:, 1], marker="x", c="red", s=60, label="true modes")
    ax.set_aspect("equal")
    if title:
        ax.set_title(title)
    return ax


def density_2d(
    points: torch.Tensor | np.ndarray,
    *,
    bins: int = 100,
    extent: tuple[float, float, float, float] | None = None,
    ax: plt.Axes | None = None,
    title: str | None = None,
) -> plt.Axes:
    """A 2D histogram (log scale) of samples: where the mass is, even when points overlap."""
    pts = _numpy(points, "points")
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"points: expected shape (N, 2), got {pts.shape}")
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 5))
    rng = None if extent is None else [[extent[0], extent[1]], [extent[2], extent[3]]]
    hist, xe, ye = np.histogram2d(pts[:, 0], pts[:, 1], bins=bins, range=rng)
    ax.imshow(np.log1p(hist.T), origin="lower", extent=(xe[0], xe[-1], ye[0], ye[-1]), cmap="viridis")
    ax.grid(False)
    if title:
        ax.set_title(title)
    return ax


def loss_curves(
    curves: Mapping[str, Sequence[float]],
    *,
    steps: Sequence[int] | None = None,
    ax: plt.Axes | None = None,
    title: str = "training",
    ylabel: str = "loss",
    logy: bool = False,
) -> plt.Axes:
    """Plot named loss curves (for example ``history.values``) against the step."""
    if not curves:
        raise ValueError("curves: expected at least one named curve")
    if ax is None:
        _, ax = plt.subplots()
    for name, values in curves.items():
        x = steps if steps is not None else range(1, len(values) + 1)
        ax.plot(list(x), list(values), label=name, lw=2)
    ax.set_xlabel("step" if steps is not None else "log point")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if logy:
        ax.set_yscale("log")
    ax.legend()
    return ax
