"""What every figure shares: pyplot, writing a figure as PNG and PDF, writing the numbers behind it.

matplotlib's backend is left to the caller: inside Jupyter figures draw inline, a script sets
``MPLBACKEND=Agg`` or calls ``matplotlib.use("Agg")`` (:func:`dynamics.runs.figures.main` does), and
without a display matplotlib falls back to a non-interactive backend by itself.

    >>> import tempfile
    >>> fig, ax = pyplot().subplots()
    >>> out = tempfile.mkdtemp()
    >>> [p.name for p in finish(fig, out, {"name": "demo", "summary": {"x": 1.0}})]
    ['demo.png', 'demo.pdf', 'demo.json']
"""

from __future__ import annotations

import json
import math
from pathlib import Path

__all__ = ["error_bar", "finish", "pyplot", "save_figure", "write_summary"]


def error_bar(se: float | None) -> float:
    """The length of an error bar for a standard error (0 where there is none: one seed, NaN).

    >>> error_bar(float("nan")), error_bar(0.2)
    (0.0, 0.2)
    """
    return 0.0 if se is None or math.isnan(se) else se


def pyplot():
    """``matplotlib.pyplot``, imported on first use (the backend is not forced)."""
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, out_dir: str | Path, name: str) -> list[Path]:
    """Write ``fig`` as ``<out_dir>/<name>.png`` and ``.pdf``; close it; return both paths.

    >>> import tempfile
    >>> fig, ax = pyplot().subplots()
    >>> [p.suffix for p in save_figure(fig, tempfile.mkdtemp(), "demo")]
    ['.png', '.pdf']
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    for p in paths:
        fig.savefig(p, dpi=150 if p.suffix == ".png" else None, bbox_inches="tight")
    pyplot().close(fig)
    return paths


def write_summary(out_dir: str | Path, name: str, summary: dict) -> Path:
    """Write the numbers behind a figure as ``<out_dir>/<name>.json`` (NaN written as null).

    >>> import tempfile
    >>> write_summary(tempfile.mkdtemp(), "demo", {"x": float("nan")}).read_text()
    '{\\n "x": null\\n}\\n'
    """
    from dynamics.records import to_jsonable

    path = Path(out_dir) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_jsonable(summary), indent=1, allow_nan=False) + "\n")
    return path


def finish(fig, out_dir: str | Path, result: dict) -> list[Path]:
    """Write ``fig`` and ``result["summary"]`` under ``result["name"]``: the PNG, PDF and JSON paths."""
    return save_figure(fig, out_dir, result["name"]) + [write_summary(out_dir, result["name"], result["summary"])]
