"""mmlib — the helper package of the course *Multimodal generative learning*.

One module per concept; each notebook's number leads to its module in one hop (see CONTRIBUTING.md).
Importing ``mmlib`` is cheap: submodules are imported where they are used.
"""

from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"

#: The repository root (the folder holding ``data/``, ``notebooks/`` and ``mmlib/``).
REPO_ROOT: Path = Path(__file__).resolve().parent.parent

__all__ = ["REPO_ROOT", "__version__"]
