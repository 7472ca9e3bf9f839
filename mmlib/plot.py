"""Figures for the lecture hall: large fonts, one result per figure (used by every notebook)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from mmlib.checks import check_bool, check_int, check_positive, check_probability, check_real

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
    """A real-valued tensor or array as a NumPy array (NaN allowed: matplotlib leaves those points out)."""
    if isinstance(x, torch.Tensor):
        if x.is_complex():
            raise TypeError(f"{name}: expected real numbers, got {x.dtype}")
        return x.detach().cpu().float().numpy()
    if isinstance(x, np.ndarray):
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise TypeError(f"{name}: expected real numbers, got {x.dtype}")
        return x
    raise TypeError(f"{name}: expected a tensor or array, got {type(x).__name__}")


def _points(x: torch.Tensor | np.ndarray, name: str) -> np.ndarray:
    """2D points ``(N, 2)`` as a NumPy array."""
    pts = _numpy(x, name)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"{name}: expected shape (N, 2), got {pts.shape}")
    return pts


def _optional_real(x: object, name: str) -> float | None:
    return None if x is None else check_real(x, name)


def _strings(x: object, name: str, n: int) -> list[str]:
    if isinstance(x, str) or not isinstance(x, Sequence) or len(x) != n or not all(isinstance(t, str) for t in x):
        raise ValueError(f"{name}: expected a list of {n} strings (one per row of images), got {x!r:.80}")
    return list(x)


def _title(x: object, name: str = "title") -> str | None:
    if x is not None and not isinstance(x, str):
        raise TypeError(f"{name}: expected a string or None, got {type(x).__name__}")
    return x


def _axes(ax: object, figsize: tuple[float, float] | None) -> plt.Axes:
    """``ax``, or a new figure's axes when it is None."""
    if ax is None:
        return plt.subplots(figsize=figsize)[1]
    if not isinstance(ax, plt.Axes):
        raise TypeError(f"ax: expected matplotlib Axes or None, got {type(ax).__name__}")
    return ax


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
    if arr.ndim != 3 or 0 in arr.shape:
        raise ValueError(f"images: expected shape (N, H, W) or (N, 1, H, W) with N, H, W > 0, got {arr.shape}")
    nrow = check_int(nrow, "nrow", low=1)
    titles = None if titles is None else _strings(titles, "titles", len(arr))
    title = _title(title)
    if not isinstance(cmap, str) or cmap not in plt.colormaps():
        raise ValueError(f"cmap: expected the name of a matplotlib colormap (for example 'gray_r'), got {cmap!r}")
    vmin, vmax = _optional_real(vmin, "vmin"), _optional_real(vmax, "vmax")
    if vmin is not None and vmax is not None and vmin >= vmax:
        raise ValueError(f"vmin, vmax: expected vmin < vmax, got {vmin} and {vmax}")
    scale = check_positive(scale, "scale")
    n = len(arr)
    cols = min(nrow, n)
    rows = int(np.ceil(n / cols))
    size = check_positive(ax_size, "ax_size") if ax_size is not None else scale
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
    pts = _points(points, "points")
    m = None if modes is None else _points(modes, "modes")
    ax = _axes(ax, (5, 5))
    title = _title(title)
    s = check_positive(s, "s")
    alpha = check_probability(alpha, "alpha")
    label = _title(label, "label")
    ax.scatter(pts[:, 0], pts[:, 1], s=s, alpha=alpha, label=label)
    if m is not None:
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
    """A 2D histogram (log scale) of samples: where the mass is, even when points overlap.

    Points with NaN or infinite coordinates are left out (the histogram counts only finite points).
    """
    pts = _points(points, "points")
    pts = pts[np.isfinite(pts).all(axis=1)]
    bins = check_int(bins, "bins", low=1)
    title = _title(title)
    if extent is None:
        if len(pts) == 0:
            raise ValueError("points: expected at least one finite point (or give extent)")
        rng = None
    else:
        if not isinstance(extent, (tuple, list)) or len(extent) != 4:
            raise ValueError(f"extent: expected (xmin, xmax, ymin, ymax), got {extent!r}")
        x0, x1, y0, y1 = (check_real(v, "extent") for v in extent)
        if not (x0 < x1 and y0 < y1):
            raise ValueError(f"extent: expected xmin < xmax and ymin < ymax, got {tuple(extent)}")
        rng = [[x0, x1], [y0, y1]]
    ax = _axes(ax, (5, 5))
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
    if not isinstance(curves, Mapping) or not curves:
        raise TypeError(f"curves: expected a non-empty dict {{name: values}}, got {curves!r:.80}")
    series = {}
    for name, values in curves.items():
        try:
            series[str(name)] = _numpy(torch.as_tensor(values, dtype=torch.float64), f"curves[{name!r}]")
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"curves[{name!r}]: expected a sequence of numbers, got {values!r:.80}") from err
        if series[str(name)].ndim != 1:
            raise ValueError(f"curves[{name!r}]: expected one value per log point, got shape "
                             f"{series[str(name)].shape}")
    if steps is not None:
        try:
            steps = _numpy(torch.as_tensor(steps, dtype=torch.float64), "steps")
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"steps: expected a sequence of step numbers, got {steps!r:.80}") from err
        for name, values in series.items():
            if steps.shape != values.shape:
                raise ValueError(f"steps: expected {len(values)} steps like curves[{name!r}], got shape {steps.shape}")
    title, ylabel = _title(title), _title(ylabel, "ylabel")
    logy = check_bool(logy, "logy")
    ax = _axes(ax, None)
    for name, values in series.items():
        x = steps if steps is not None else np.arange(1, len(values) + 1)
        ax.plot(x, values, label=name, lw=2)
    ax.set_xlabel("step" if steps is not None else "log point")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if logy:
        ax.set_yscale("log")
    ax.legend()
    return ax
