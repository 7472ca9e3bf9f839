"""Interactive figures: sliders that redraw a plot (chapter 01's likelihood surface, chapter 04's latent traversal).

Only what ipywidgets 7.7 (Google Colab) and 8 both provide is used: ``FloatSlider``, ``IntSlider``, ``VBox``,
``HBox``, ``Output`` and ``interactive_output``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import ipywidgets as widgets
import matplotlib.pyplot as plt

from mmlib.checks import check_real

__all__ = ["slider_plot", "make_slider"]

SliderSpec = tuple[float, float, float, float]  # (min, max, step, value)


def make_slider(name: str, spec: SliderSpec | widgets.Widget) -> widgets.Widget:
    """A ``FloatSlider`` (or ``IntSlider`` when every number is an int) from ``(min, max, step, value)``."""
    if not isinstance(name, str) or not name.isidentifier():
        raise TypeError(f"name: expected a Python identifier (the keyword passed to draw), got {name!r}")
    if isinstance(spec, widgets.Widget):
        return spec
    if not isinstance(spec, tuple) or len(spec) != 4:
        raise ValueError(f"spec of slider {name!r}: expected a (min, max, step, value) tuple or an ipywidgets slider, "
                         f"got {spec!r}")
    low, high, step, value = (check_real(v, f"spec of slider {name!r}") for v in spec)
    spec = tuple(v if isinstance(v, int) else float(v) for v in spec)
    if not low <= value <= high or step <= 0:
        raise ValueError(f"spec of slider {name!r}: expected min <= value <= max and step > 0, got {spec!r}")
    style = {"description_width": "initial"}
    layout = widgets.Layout(width="420px")
    if all(isinstance(v, int) and not isinstance(v, bool) for v in spec):
        return widgets.IntSlider(value=value, min=low, max=high, step=step, description=name, style=style,
                                 layout=layout, continuous_update=False)
    return widgets.FloatSlider(value=float(value), min=float(low), max=float(high), step=float(step),
                               description=name, style=style, layout=layout, continuous_update=False,
                               readout_format=".3g")


def slider_plot(draw: Callable[..., object], **sliders: SliderSpec | widgets.Widget) -> widgets.VBox:
    """Sliders above a plot: ``draw(**values)`` is called (and the figure shown) whenever a slider moves.

    ``draw`` receives one keyword argument per slider and draws with matplotlib (it may create its own figure);
    the returned ``VBox`` holds the sliders (``.children[0].children``) and the output area (``.children[1]``).
    """
    if not callable(draw):
        raise TypeError(f"draw: expected a function of the slider values, got {type(draw).__name__}")
    if not sliders:
        raise ValueError("sliders: expected at least one slider, e.g. mu=(-2.0, 2.0, 0.1, 0.0)")
    controls: Mapping[str, widgets.Widget] = {name: make_slider(name, spec) for name, spec in sliders.items()}

    def redraw(**values: float) -> None:
        draw(**values)
        plt.show()

    out = widgets.interactive_output(redraw, dict(controls))
    return widgets.VBox([widgets.VBox(list(controls.values())), out])
